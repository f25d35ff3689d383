"""load_pretrained: local ImageNet checkpoints into backbones, strict errors naming the file."""

from __future__ import annotations

import argparse
import pickle

import pytest
import torch
from torchvision.models import resnet18

from balda.models import DAFormer, DeepLabV2, SmallSegNet, WeightsError, load_pretrained
from balda.models.mit import mit
from tests.models.test_mit import _to_mmseg


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """A torchvision ResNet-18 ImageNet-style checkpoint (random weights, fc included)."""
    torch.manual_seed(0)
    tv = resnet18()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(tv.state_dict(), path)
    return path, tv.state_dict()


def _backbone_out(model, x):
    model.eval()
    with torch.no_grad():
        return model.backbone(x)


def _assert_same(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=0, atol=0)


def test_torchvision_resnet_checkpoint_fc_ignored(resnet18_file):
    path, tv_sd = resnet18_file
    model = DeepLabV2("resnet18", freeze_bn=True)
    result = load_pretrained(model, path)
    assert result.ignored == ["fc.bias", "fc.weight"]
    assert result.loaded == len(tv_sd) - 2
    own = model.backbone.state_dict()
    assert all(torch.equal(own[k], v) for k, v in tv_sd.items() if not k.startswith("fc."))
    assert not model.backbone.bn1.weight.requires_grad  # frozen BN stays frozen


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "ddp"])
def test_round_trip_identical_outputs(tmp_path, wrap):
    torch.manual_seed(0)
    src = SmallSegNet(width=8).train()
    src(torch.randn(2, 3, 32, 32))  # non-trivial running statistics
    sd = src.backbone.state_dict()
    obj = {
        "plain": sd,
        "state_dict": {"state_dict": sd, "meta": {"epoch": 3}},
        "model": {"model": sd},
        "ddp": {f"module.{k}": v for k, v in sd.items()},
    }[wrap]
    path = tmp_path / "small.pth"
    torch.save(obj, path)
    dst = SmallSegNet(width=8)
    load_pretrained(dst, path)
    x = torch.randn(2, 3, 40, 48)
    _assert_same(_backbone_out(src, x), _backbone_out(dst, x))


def test_whole_segmentor_checkpoint_uses_backbone_part(tmp_path):
    torch.manual_seed(0)
    src = SmallSegNet(num_classes=3, width=8)
    path = tmp_path / "small_full.pth"
    torch.save({"state_dict": src.state_dict()}, path)
    dst = SmallSegNet(num_classes=3, width=8)
    load_pretrained(dst, path)
    x = torch.randn(1, 3, 32, 32)
    _assert_same(_backbone_out(src, x), _backbone_out(dst, x))


def test_mit_official_and_mmseg_naming(tmp_path):
    torch.manual_seed(0)
    enc = mit("mit_b0")
    official = dict(enc.state_dict())
    official["head.weight"] = torch.randn(1000, 256)  # ImageNet classifier of mit_b0.pth
    official["head.bias"] = torch.zeros(1000)
    x = torch.randn(1, 3, 64, 64)
    enc.eval()
    with torch.no_grad():
        ref = enc(x)
    for name, sd in (("mit_b0.pth", official), ("mit_b0_mmseg.pth", _to_mmseg(official))):
        torch.save(sd, tmp_path / name)
        model = DAFormer("mit_b0")
        result = load_pretrained(model, tmp_path / name)
        assert result.ignored == ["head.bias", "head.weight"]
        _assert_same(ref, _backbone_out(model, x))


def test_missing_file(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(WeightsError, match="nope.pth"):
        load_pretrained(SmallSegNet(width=8), path)


def test_garbage_bytes(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"\x00\x01 this is not a checkpoint \xff" * 10)
    with pytest.raises(WeightsError, match="garbage.pth"):
        load_pretrained(SmallSegNet(width=8), path)


def test_arbitrary_pickle_is_refused(tmp_path):
    path = tmp_path / "object.pth"
    path.write_bytes(pickle.dumps(argparse.Namespace(a=1), protocol=2))  # not loadable with weights_only=True
    with pytest.raises(WeightsError, match="object.pth"):
        load_pretrained(SmallSegNet(width=8), path)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(3)], path)
    with pytest.raises(WeightsError, match="list.pth"):
        load_pretrained(SmallSegNet(width=8), path)


def test_other_architecture_weights(resnet18_file):
    path, _ = resnet18_file
    with torch.device("meta"):  # only keys and shapes matter
        model = DAFormer("mit_b0")
    with pytest.raises(WeightsError) as err:
        load_pretrained(model, path)
    msg = str(err.value)
    assert "resnet18.pth" in msg and "missing" in msg and "unexpected" in msg
    assert "patch_embed1.proj.weight" in msg and "conv1.weight" in msg


def test_missing_keys_and_shape_mismatch(tmp_path, resnet18_file):
    path, _ = resnet18_file
    with torch.device("meta"):
        model = DeepLabV2("resnet34")
    with pytest.raises(WeightsError) as err:  # resnet34 has more blocks
        load_pretrained(model, path)
    assert "resnet18.pth" in str(err.value) and "missing: layer1.2.conv1.weight" in str(err.value)
    path2 = tmp_path / "small16.pth"
    torch.save(SmallSegNet(width=16).backbone.state_dict(), path2)
    with pytest.raises(WeightsError) as err:
        load_pretrained(SmallSegNet(width=8), path2)
    assert "small16.pth" in str(err.value) and "shape mismatch" in str(err.value)
    assert "stem.0.weight (file (16, 3, 3, 3) vs model (8, 3, 3, 3))" in str(err.value)


def test_diff_state_dict_lists_each_kind_of_mismatch():
    from balda.models.weights import diff_state_dict

    own = {"a": torch.zeros(2), "b": torch.zeros(3), "n": torch.zeros(())}
    other = {"a": torch.zeros(2), "b": torch.zeros(4), "extra": torch.zeros(1)}
    d = diff_state_dict(own, other, optional=lambda k: k == "n")
    assert d.missing == [] and d.unexpected == ["extra"] and d.mismatched == ["b (file (4,) vs model (3,))"]
    assert d and "1 unexpected: extra" in str(d) and "1 shape mismatches" in str(d)
    assert not diff_state_dict(own, dict(own))
    assert diff_state_dict(own, {"a": torch.zeros(2), "b": torch.zeros(3)}).missing == ["n"]


def test_load_segmentor_reads_a_run_checkpoint_or_a_state_dict(tmp_path):
    from balda.models.weights import load_segmentor

    torch.manual_seed(0)
    src = SmallSegNet(width=8)
    ckpt = tmp_path / "final.pt"  # a balda checkpoint pickles more than tensors
    torch.save({"model": src.state_dict(), "step": 3, "rng": {"numpy": ("MT19937", [1, 2])}}, ckpt)
    plain = tmp_path / "plain.pt"
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, plain)
    for path in (ckpt, plain):
        dst = SmallSegNet(width=8)
        assert load_segmentor(dst, path) == len(src.state_dict())
        for k, v in src.state_dict().items():
            assert torch.equal(dst.state_dict()[k], v), k
    with pytest.raises(WeightsError, match="final.pt.*shape mismatches"):
        load_segmentor(SmallSegNet(width=16), ckpt)
    with pytest.raises(WeightsError, match="model.init weights file not found: .*nope.pt"):
        load_segmentor(SmallSegNet(width=8), tmp_path / "nope.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read model.init weights .*garbage.pt"):
        load_segmentor(SmallSegNet(width=8), garbage)
