"""Panoptic strategies against their equations: centre MSE and offset L1 closed forms, the three
terms and their weights, GBW on the semantic CE, and EDAPS-style mixed instance targets."""

from __future__ import annotations

import pytest
import torch

from balda.config import load_config, resolve_config
from balda.data.panoptic import panoptic_targets
from balda.methods import build_strategy
from balda.methods.panoptic import center_loss, offset_loss, upsample_instance
from balda.models import build_model
from balda.models.panoptic import PanopticSegmentor, PanOutput


def test_center_and_offset_losses_closed_form():
    g = torch.Generator().manual_seed(0)
    p, t = torch.rand(2, 5, 6, generator=g, dtype=torch.float64), torch.rand(2, 5, 6, generator=g, dtype=torch.float64)
    w = (torch.rand(2, 5, 6, generator=g) > 0.5).double()
    assert center_loss(p, t, w).item() == pytest.approx(float((w * (p - t) ** 2).sum() / w.sum()), rel=1e-12)
    po, to = torch.randn(2, 2, 5, 6, generator=g, dtype=torch.float64), torch.randn(2, 2, 5, 6, generator=g).double()
    ref = (w * ((po[:, 0] - to[:, 0]).abs() + (po[:, 1] - to[:, 1]).abs())).sum() / w.sum()
    assert offset_loss(po, to, w).item() == pytest.approx(float(ref), rel=1e-12)
    p.requires_grad_(True)
    z = center_loss(p, t, torch.zeros_like(w))
    z.backward()
    assert z.item() == 0.0 and torch.count_nonzero(p.grad) == 0


def _cfg(config="streets_panoptic/source_only", *over):
    return load_config(
        resolve_config(config),
        ["model.name=small", "model.pretrained=null", "model.width=8", "model.output_stride=2", *over],
    )


def _model(cfg):
    torch.manual_seed(0)
    return PanopticSegmentor(build_model(cfg.model), head_channels=8).double()


def _part(b=2, h=16, w=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn(b, 3, h, w, generator=g, dtype=torch.float64),
        "label": torch.randint(0, 19, (b, h, w), generator=g),
        "center": torch.rand(b, h, w, generator=g, dtype=torch.float64),
        "center_weight": (torch.rand(b, h, w, generator=g) > 0.2).double(),
        "offset": torch.randn(b, 2, h, w, generator=g, dtype=torch.float64),
        "offset_weight": (torch.rand(b, h, w, generator=g) > 0.6).double(),
        "semantic_weight": 1 + 2 * (torch.rand(b, h, w, generator=g) > 0.9).double(),
    }


@pytest.mark.parametrize("config,domain", [("source_only", "source"), ("oracle", "target")])
def test_supervised_terms_and_weights(config, domain):
    import torch.nn.functional as F

    cfg = _cfg(f"streets_panoptic/{config}")
    model = _model(cfg)
    st = build_strategy(cfg, model)
    batch = {"source": _part(seed=1), "target": _part(seed=2)}
    out = st.compute_losses(model, batch, 0)
    assert set(out.losses) == {f"{domain}.ce", f"{domain}.center", f"{domain}.offset"}
    assert set(out.task) == set(out.losses)
    assert out.weight(f"{domain}.center") == 200.0 and out.weight(f"{domain}.offset") == 0.01
    part = batch[domain]
    o = model(part["image"])
    logits = F.interpolate(o.logits, size=(16, 16), mode="bilinear", align_corners=False)
    ce = F.cross_entropy(logits, part["label"], reduction="none")
    ref_ce = (part["semantic_weight"] * ce).sum() / ce.numel()
    torch.testing.assert_close(out.losses[f"{domain}.ce"].double(), ref_ce, rtol=1e-5, atol=1e-6)  # CE runs in fp32
    c, off = upsample_instance(o, (16, 16))
    torch.testing.assert_close(out.losses[f"{domain}.center"], center_loss(c, part["center"], part["center_weight"]))
    torch.testing.assert_close(out.losses[f"{domain}.offset"], offset_loss(off, part["offset"], part["offset_weight"]))


def test_gbw_weights_the_semantic_ce():
    from balda.balancing.class_weights import build_weighting

    cfg = _cfg("streets_panoptic/source_only", "balancing.class_weights=gbw")
    model = _model(cfg)
    st = build_strategy(cfg, model, build_weighting(cfg.balancing, 19))
    out = st.compute_losses(model, {"source": _part(seed=1), "target": _part(seed=2)}, 0)
    assert "weights/source" in out.logs  # the GBW class weights of the source CE term


def test_mixed_instance_targets_paste_source_instances_over_pseudo_ones():
    """Teacher: one car (pseudo instance 1) on the left, road elsewhere; source: a person (id 5)
    pasted at the bottom right. The mixed targets are Panoptic-DeepLab's on the mixed maps, the
    source id shifted past the pseudo ones (5 + 2 = 7), weights m = M + (1 - M) q."""
    cfg = _cfg("streets_panoptic/self_training", "eval.view=19")
    model = _model(cfg).float()
    st = build_strategy(cfg, model)
    H = W = 16
    pseudo = torch.zeros(1, H, W, dtype=torch.long)  # road
    pseudo[0, 2:9, 1:7] = 13  # car
    yy, xx = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    cy, cx = 5.0, 3.5
    center = torch.exp(-((yy - 5) ** 2 + (xx - 3) ** 2) / 2.0)[None, None]
    offset = torch.stack([cy - yy, cx - xx])[None]
    t_out = PanOutput(torch.zeros(1, 4, H, W), torch.zeros(1, 19, H, W), center, offset)
    mask = torch.zeros(1, H, W, dtype=torch.bool)
    mask[0, 10:15, 11:14] = True
    ins_s = torch.zeros(1, H, W, dtype=torch.long)
    ins_s[0, 10:15, 11:14] = 5
    src = {"instance": ins_s, "semantic_weight": torch.full((1, H, W), 3.0)}
    y_mix = torch.where(mask, torch.full_like(pseudo, 11), pseudo)  # person pasted
    extra = st.mixed_extras(mask, src, None, t_out, pseudo, y_mix)
    expected_ins = torch.zeros(1, H, W, dtype=torch.long)
    expected_ins[0, 2:9, 1:7] = 1
    expected_ins[0, 10:15, 11:14] = 7
    ref = panoptic_targets(y_mix[0], expected_ins[0], sigma=4.0, small_area=64, small_weight=3.0, things=st.things)
    for k in ("center", "center_weight", "offset", "offset_weight"):
        torch.testing.assert_close(extra[k][0], ref[k], msg=k)
    assert torch.all(extra["semantic_weight"][0][mask[0]] == 3.0) and torch.all(
        extra["semantic_weight"][0][~mask[0]] == 1
    )
