"""DAFormer: MiT encoder + context-aware fusion head."""

from __future__ import annotations

import torch
from torch import nn

from balda.models import DAFormer, DAFormerHead, SegOutput


def test_forward_shapes_stride_4():
    torch.manual_seed(0)
    model = DAFormer("mit_b0", num_classes=7).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, SegOutput)
    assert out.features.shape == (2, 256, 16, 24) and model.feature_channels == 256
    assert out.logits.shape == (2, 7, 16, 24) and model.output_stride == 4


def test_head_structure():
    head = DAFormerHead([32, 64, 160, 256], num_classes=19)
    assert [e.proj.in_features for e in head.embed_layers] == [32, 64, 160, 256]
    assert all(e.proj.out_features == 256 for e in head.embed_layers)
    fuse = head.fuse_layer
    assert fuse.dilations == (1, 6, 12, 18)
    first = fuse.branches[0]
    assert first[0].kernel_size == (1, 1) and isinstance(first[1], nn.BatchNorm2d) and isinstance(first[2], nn.ReLU)
    for d, branch in zip((6, 12, 18), fuse.branches[1:]):
        dw, pw = branch
        assert dw[0].kernel_size == (3, 3) and dw[0].dilation == (d, d) and dw[0].groups == 1024
        assert isinstance(dw[1], nn.BatchNorm2d) and isinstance(dw[2], nn.ReLU)
        assert pw[0].kernel_size == (1, 1) and pw[0].out_channels == 256 and isinstance(pw[1], nn.BatchNorm2d)
    bott = fuse.bottleneck
    assert bott[0].kernel_size == (3, 3) and bott[0].in_channels == 4 * 256 and bott[0].out_channels == 256
    assert isinstance(bott[1], nn.BatchNorm2d) and isinstance(bott[2], nn.ReLU)
    assert head.dropout.p == 0.1 and head.conv_seg.kernel_size == (1, 1)


def test_features_are_taken_before_dropout():
    torch.manual_seed(0)
    head = DAFormerHead([8, 8, 8, 8], num_classes=3, embed_dim=16)
    feats = [torch.randn(2, 8, 8 // s, 8 // s) for s in (1, 2, 4, 8)]
    head.eval()
    out = head(feats)
    torch.testing.assert_close(out.logits, head.conv_seg(out.features))
    head.train()
    torch.manual_seed(1)
    out = head(feats)
    torch.manual_seed(1)
    torch.testing.assert_close(out.logits, head.conv_seg(head.dropout(out.features)))


def test_mit_b5_daformer_construction():
    with torch.device("meta"):
        model = DAFormer("mit_b5")
    n_enc = sum(p.numel() for p in model.backbone.parameters()) / 1e6
    n_head = sum(p.numel() for p in model.decode_head.parameters()) / 1e6
    assert abs(n_enc - 81.4) < 0.5 and 3.5 < n_head < 3.9  # DAFormer reports a 3.7M decoder
    assert model.decode_head.conv_seg.out_channels == 19


def test_gradients_reach_all_trainable_params():
    torch.manual_seed(0)
    model = DAFormer("mit_b0", num_classes=3).train()
    out = model(torch.randn(2, 3, 32, 32))
    (out.logits.square().mean() + out.features.mean()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_no_decay_names():
    model = DAFormer("mit_b0")
    names = model.no_decay_parameter_names()
    for n in (
        "backbone.patch_embed1.norm.weight",
        "backbone.block1.0.norm1.bias",
        "backbone.block1.0.attn.norm.weight",
        "backbone.norm4.weight",
        "decode_head.fuse_layer.bottleneck.1.weight",
    ):
        assert n in names
    for n in (
        "backbone.block1.0.attn.q.weight",
        "backbone.block1.0.attn.q.bias",
        "decode_head.conv_seg.weight",
        "backbone.patch_embed1.proj.weight",
    ):
        assert n not in names
