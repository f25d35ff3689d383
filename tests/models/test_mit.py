"""MiT encoders (SegFormer): variant sizes, strides, attention, stochastic depth."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from balda.models.mit import MIT_SETTINGS, EfficientSelfAttention, convert_mmseg_mit_state_dict, mit

# Encoder sizes published in SegFormer (Xie et al., NeurIPS 2021, Table 1/6), in millions.
PUBLISHED = {"mit_b0": 3.4, "mit_b1": 13.1, "mit_b2": 24.2, "mit_b3": 44.0, "mit_b4": 60.8, "mit_b5": 81.4}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_match_published(name):
    with torch.device("meta"):
        enc = mit(name)
    n = sum(p.numel() for p in enc.parameters()) / 1e6
    assert abs(n - PUBLISHED[name]) / PUBLISHED[name] < 0.05, (name, n)
    assert enc.out_channels == list(MIT_SETTINGS[name]["embed_dims"])
    assert [len(getattr(enc, f"block{i}")) for i in range(1, 5)] == list(MIT_SETTINGS[name]["depths"])


def test_b5_structure():
    with torch.device("meta"):
        enc = mit("mit_b5")
    assert enc.depths == [3, 6, 40, 3]
    assert enc.patch_embed1.proj.kernel_size == (7, 7) and enc.patch_embed1.proj.stride == (4, 4)
    for i in (2, 3, 4):
        pe = getattr(enc, f"patch_embed{i}").proj
        assert pe.kernel_size == (3, 3) and pe.stride == (2, 2) and pe.padding == (1, 1)
    assert [getattr(enc, f"block{i}")[0].attn.sr_ratio for i in range(1, 5)] == [8, 4, 2, 1]
    assert [getattr(enc, f"block{i}")[0].attn.num_heads for i in range(1, 5)] == [1, 2, 5, 8]
    assert not hasattr(enc.block4[0].attn, "sr")
    assert enc.block1[0].mlp.fc1.out_features == 4 * 64
    assert enc.block2[0].mlp.dwconv.dwconv.groups == 4 * 128
    rates = [b.drop_path.p for i in range(1, 5) for b in getattr(enc, f"block{i}")]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.1)
    assert all(a <= b for a, b in zip(rates, rates[1:]))


def test_b0_forward_strides():
    torch.manual_seed(0)
    enc = mit("mit_b0").eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        outs = enc(x)
    assert [tuple(o.shape) for o in outs] == [(2, 32, 16, 24), (2, 64, 8, 12), (2, 160, 4, 6), (2, 256, 2, 3)]
    assert enc.strides == [4, 8, 16, 32]


def test_efficient_attention_matches_reference():
    torch.manual_seed(0)
    attn = EfficientSelfAttention(dim=16, num_heads=2, sr_ratio=2).eval()
    h, w = 4, 6
    x = torch.randn(3, h * w, 16)
    with torch.no_grad():
        out = attn(x, h, w)
        xr = attn.sr(x.transpose(1, 2).reshape(3, 16, h, w)).flatten(2).transpose(1, 2)
        xr = attn.norm(xr)
        q = attn.q(x).reshape(3, h * w, 2, 8).transpose(1, 2)
        k, v = attn.kv(xr).reshape(3, -1, 2, 2, 8).permute(2, 0, 3, 1, 4)
        a = F.softmax(q @ k.transpose(-1, -2) / 8**0.5, dim=-1)
        ref = attn.proj((a @ v).transpose(1, 2).reshape(3, h * w, 16))
    assert k.shape[2] == (h // 2) * (w // 2)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def _to_mmseg(sd):
    """Official -> mmseg names (the inverse of the mapping under test), written for the test."""
    out = {}
    for k, v in sd.items():
        stage = None
        for prefix, part in (("patch_embed", 0), ("block", 1), ("norm", 2)):  # noqa: B007 - used after the loop
            if k.startswith(prefix) and k[len(prefix)].isdigit():
                stage, rest = int(k[len(prefix)]) - 1, k[len(prefix) + 2 :]
                break
        if stage is None:
            out[k] = v
            continue
        if part == 0:
            out[f"layers.{stage}.0.{rest.replace('proj.', 'projection.')}"] = v
        elif part == 2:
            out[f"layers.{stage}.2.{rest}"] = v
        else:
            j, sub = rest.split(".", 1)
            p = f"layers.{stage}.1.{j}."
            if sub.startswith("attn.q."):
                kind = sub.split(".")[-1]
                out[p + f"attn.attn.in_proj_{kind}"] = torch.cat([v, sd[k.replace("attn.q.", "attn.kv.")]])
            elif sub.startswith("attn.kv."):
                continue
            elif sub.startswith("attn.proj."):
                out[p + "attn.attn.out_proj." + sub.split(".")[-1]] = v
            elif sub.startswith("mlp."):
                kind = sub.split(".")[-1]
                if "fc1" in sub or "fc2" in sub:
                    idx = "0" if "fc1" in sub else "4"
                    out[p + f"ffn.layers.{idx}.{kind}"] = v.reshape(*v.shape, 1, 1) if kind == "weight" else v
                else:
                    out[p + f"ffn.layers.1.{kind}"] = v
            else:
                out[p + sub] = v
    return out


def test_mmseg_names_convert_back_to_official():
    enc = mit("mit_b0")
    sd = enc.state_dict()
    mm = _to_mmseg(sd)
    assert "layers.0.1.0.attn.attn.in_proj_weight" in mm and "layers.3.2.weight" in mm
    back = convert_mmseg_mit_state_dict(mm)
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_unknown_variant():
    with pytest.raises(ValueError, match="mit_b9"):
        mit("mit_b9")


def test_drop_path_per_sample():
    from balda.models.mit import DropPath

    dp = DropPath(0.5)
    x = torch.ones(2000, 3, 4)
    torch.manual_seed(0)
    y = dp(x)
    per_sample = y.flatten(1)
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
    assert (per_sample == per_sample[:, :1]).all()  # whole samples are dropped or kept
    assert abs(y.mean().item() - 1.0) < 0.1
    assert torch.equal(dp.eval()(x), x)
