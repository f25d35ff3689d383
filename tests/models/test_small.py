"""SmallSegNet: the fast CPU model of the embedded benchmark."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from balda.models import SegOutput, SmallSegNet


def test_shapes_stride_4_and_widths():
    torch.manual_seed(0)
    model = SmallSegNet(num_classes=19, width=32).eval()
    x = torch.randn(4, 3, 128, 256)
    with torch.no_grad():
        feats = model.backbone(x)
        out = model(x)
    assert isinstance(out, SegOutput)
    assert [tuple(f.shape[1:]) for f in feats] == [(32, 32, 64), (64, 16, 32), (128, 16, 32), (128, 16, 32)]
    assert out.features.shape == (4, 64, 32, 64) and model.feature_channels == 64
    assert out.logits.shape == (4, 19, 32, 64) and model.output_stride == 4
    assert model.backbone.layer4[0].conv2[0].dilation == (4, 4)
    assert all(isinstance(m, nn.BatchNorm2d) for m in (model.backbone.stem[1], model.decode_head.fuse[0][0][1]))
    assert sum(p.numel() for p in model.parameters()) < 1_000_000


def test_width_and_odd_sizes():
    model = SmallSegNet(num_classes=3, width=16).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 72, 100))
    assert out.features.shape == (1, 32, 18, 25) and out.logits.shape == (1, 3, 18, 25)


def test_learns_a_toy_segmentation():
    torch.manual_seed(0)
    model = SmallSegNet(num_classes=3, width=8).train()
    # piecewise-constant label map (8x8 blocks); the image is its one-hot colour plus noise
    y = torch.randint(0, 3, (4, 4, 4)).repeat_interleave(8, 1).repeat_interleave(8, 2)
    x = F.one_hot(y, 3).permute(0, 3, 1, 2).float() + 0.5 * torch.randn(4, 3, 32, 32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        logits = F.interpolate(model(x).logits, size=(32, 32), mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


def test_gradients_and_freeze_bn():
    torch.manual_seed(0)
    model = SmallSegNet(num_classes=3, width=8, freeze_bn=True).train()
    before = model.backbone.stem[1].running_var.clone()
    out = model(torch.randn(2, 3, 32, 32))
    (out.logits.square().mean() + out.features.mean()).backward()
    assert torch.equal(before, model.backbone.stem[1].running_var)
    for name, p in model.named_parameters():
        is_backbone_bn = name.startswith("backbone.") and p.dim() == 1  # backbone convs have no bias
        if is_backbone_bn:
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
    # the head keeps learning its BatchNorm statistics
    assert model.decode_head.skip[1].training
