"""build_model: every config, backbone validation, pretrained loading, SyncBatchNorm."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from balda.config import ConfigError, ModelConfig
from balda.models import DAFormer, DeepLabV2, Segmentor, SmallSegNet, WeightsError, build_model


@pytest.mark.parametrize(
    "name,backbone,cls,channels,stride",
    [
        ("deeplabv2", "resnet18", DeepLabV2, 512, 8),
        ("deeplabv2", "resnet34", DeepLabV2, 512, 8),
        ("deeplabv2", "resnet50", DeepLabV2, 2048, 8),
        ("deeplabv2", "resnet101", DeepLabV2, 2048, 8),
        ("daformer", "mit_b0", DAFormer, 256, 4),
        ("daformer", "mit_b5", DAFormer, 256, 4),
        ("small", "resnet101", SmallSegNet, 64, 4),  # backbone ignored by small
    ],
)
def test_build_each_config(name, backbone, cls, channels, stride):
    with torch.device("meta"):  # construction only; forwards are tested per model
        model = build_model(ModelConfig(name=name, backbone=backbone, num_classes=11))
    assert isinstance(model, cls) and isinstance(model, Segmentor)
    assert model.num_classes == 11 and model.feature_channels == channels and model.output_stride == stride
    assert isinstance(model.backbone, nn.Module) and isinstance(model.decode_head, nn.Module)
    assert callable(model.no_decay_parameter_names)


def test_build_small_forward_and_width():
    model = build_model(ModelConfig(name="small", width=16, num_classes=5)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 64))
    assert out.features.shape == (1, 32, 8, 16) and out.logits.shape == (1, 5, 8, 16)


@pytest.mark.parametrize(
    "name,backbone", [("deeplabv2", "mit_b5"), ("daformer", "resnet101"), ("deeplabv2", "resnet7")]
)
def test_wrong_backbone(name, backbone):
    with pytest.raises(ConfigError, match="model.backbone"):
        build_model(ModelConfig(name=name, backbone=backbone))


def test_freeze_bn_and_sync_bn():
    model = build_model(ModelConfig(name="deeplabv2", backbone="resnet18", freeze_bn=True, sync_bn=True))
    bns = [m for m in model.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and all(isinstance(m, nn.SyncBatchNorm) for m in bns)
    model.train()
    assert all(not m.training and not m.weight.requires_grad for m in bns)
    small = build_model(ModelConfig(name="small", width=8, sync_bn=True))
    assert any(isinstance(m, nn.SyncBatchNorm) for m in small.modules())
    assert not any(type(m) is nn.BatchNorm2d for m in small.modules())


def test_pretrained_loaded_and_bad_path(tmp_path):
    torch.manual_seed(0)
    src = SmallSegNet(width=8)
    path = tmp_path / "small_imnet.pth"
    torch.save(src.backbone.state_dict(), path)
    model = build_model(ModelConfig(name="small", width=8, pretrained=str(path)))
    assert torch.equal(model.backbone.stem[0].weight, src.backbone.stem[0].weight)
    with pytest.raises(WeightsError, match="missing.pth"):
        build_model(ModelConfig(name="small", width=8, pretrained=str(tmp_path / "missing.pth")))
