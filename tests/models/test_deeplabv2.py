"""DeepLabV2: output stride 8, ASPP classifier, frozen BatchNorm, gradient flow."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from balda.models import DeepLabV2, SegOutput
from balda.models.deeplabv2 import ASPPClassifier


@pytest.mark.parametrize("backbone,channels", [("resnet18", 512), ("resnet50", 2048)])
def test_output_stride_8_and_feature_channels(backbone, channels):
    torch.manual_seed(0)
    model = DeepLabV2(backbone, num_classes=5).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = model.backbone(x)
        out = model(x)
    assert isinstance(out, SegOutput)
    assert [f.shape[-2:] for f in feats] == [(16, 24), (8, 12), (8, 12), (8, 12)]
    assert model.feature_channels == channels == feats[-1].shape[1]
    assert out.features.shape == (1, channels, 8, 12)
    assert out.logits.shape == (1, 5, 8, 12)
    assert model.output_stride == 8 and model.num_classes == 5
    # features are the classifier's input: the layer4 map
    torch.testing.assert_close(out.features, feats[-1])


def test_basicblock_dilation_pattern():
    model = DeepLabV2("resnet18")
    l3, l4 = model.backbone.layer3, model.backbone.layer4
    assert l3[0].conv1.stride == (1, 1) and l3[0].downsample[0].stride == (1, 1)
    assert l4[0].conv1.stride == (1, 1) and l4[0].downsample[0].stride == (1, 1)
    assert [b.conv2.dilation for b in l3] == [(1, 1), (2, 2)]
    assert [b.conv2.dilation for b in l4] == [(2, 2), (4, 4)]


def test_resnet101_construction_aspp_and_params():
    with torch.device("meta"):
        model = DeepLabV2("resnet101", num_classes=19)
    n_backbone = sum(p.numel() for p in model.backbone.parameters())
    # torchvision ResNet-101 has 44.55M parameters, 2.05M of them in the ImageNet fc layer.
    assert abs(n_backbone - 42.50e6) < 0.01e6
    head = model.decode_head
    assert isinstance(head, ASPPClassifier) and head.dilations == (6, 12, 18, 24)
    assert [c.dilation for c in head.convs] == [(d, d) for d in (6, 12, 18, 24)]
    assert [c.padding for c in head.convs] == [(d, d) for d in (6, 12, 18, 24)]
    assert all(c.kernel_size == (3, 3) and c.bias is not None and c.in_channels == 2048 for c in head.convs)
    assert all(c.out_channels == 19 for c in head.convs)
    assert model.feature_channels == 2048
    # bottleneck dilation: torchvision replace_stride_with_dilation=[False, True, True]
    assert model.backbone.layer3[1].conv2.dilation == (2, 2)
    assert model.backbone.layer4[1].conv2.dilation == (4, 4)
    assert len(model.backbone.layer3) == 23


def test_aspp_is_sum_of_branches_and_init():
    torch.manual_seed(0)
    head = ASPPClassifier(16, 3)
    for c in head.convs:
        assert abs(c.weight.std().item() - 0.01) < 0.003 and c.bias.abs().sum() == 0
    x = torch.randn(1, 16, 9, 9)
    out = head([x])
    expected = sum(c(x) for c in head.convs)
    torch.testing.assert_close(out.logits, expected)
    assert out.features is x


def test_freeze_bn_keeps_stats_and_blocks_grads():
    torch.manual_seed(0)
    model = DeepLabV2("resnet18", num_classes=4, freeze_bn=True)
    bns = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not p.requires_grad for m in bns for p in m.parameters())
    model.train()
    assert model.training and all(not m.training for m in bns)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items() if "running" in k}
    out = model(torch.randn(2, 3, 48, 48))
    out.logits.mean().backward()
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for m in bns for p in m.parameters())
    assert model.decode_head.convs[0].weight.grad is not None
    model.eval()
    model.train(True)  # persistent across mode switches
    assert all(not m.training for m in bns)


def test_unfrozen_bn_updates_stats():
    model = DeepLabV2("resnet18", num_classes=4).train()
    bn = model.backbone.bn1
    before = bn.running_mean.clone()
    model(torch.randn(2, 3, 32, 32))
    assert not torch.equal(before, bn.running_mean) and bn.weight.requires_grad


def test_gradients_reach_all_trainable_params():
    torch.manual_seed(0)
    model = DeepLabV2("resnet18", num_classes=3).train()
    out = model(torch.randn(2, 3, 48, 48))
    (out.logits.square().mean() + out.features.mean()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_no_decay_names_are_norm_params():
    model = DeepLabV2("resnet18")
    names = model.no_decay_parameter_names()
    assert "backbone.bn1.weight" in names and "backbone.layer4.1.bn2.bias" in names
    assert "backbone.conv1.weight" not in names and "decode_head.convs.0.bias" not in names
    all_names = dict(model.named_parameters())
    assert names <= set(all_names)
    assert {n for n in all_names if ".bn" in n or "downsample.1" in n} == names


def test_unknown_backbone():
    with pytest.raises(ValueError, match="resnet152"):
        DeepLabV2("resnet152")
