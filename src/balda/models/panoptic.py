"""Panoptic segmentor: a semantic segmentor plus Panoptic-DeepLab instance heads on its decoder.

EDAPS (Saha et al., "EDAPS: Enhanced Domain-Adaptive Panoptic Segmentation", ICCV 2023) shares
one DAFormer encoder between the semantic and the instance branch; Panoptic-DeepLab (Cheng et
al., CVPR 2020) predicts, per pixel, a centre heatmap and the offset to the instance centre. Here
both instance heads sit on the decoder features ``F`` (B, C, h, w) of any balda segmentor (DAFormer,
DeepLabV2, the EfficientNet-Lite benchmark model), so the whole decoder is shared:

    center = conv1x1(ReLU(BN(conv3x3(F))))                      (B, 1, h, w), no sigmoid
    offset = conv1x1(ReLU(BN(conv3x3(F))))                      (B, 2, h, w), (dy, dx) in input pixels

at the decoder's output stride; the losses and the post-processing upsample them (bilinear) to
the label resolution. The centre head regresses the Gaussian heatmap directly (MSE, no sigmoid),
as Panoptic-DeepLab does. The spec (docs/panoptic.md) places the heads "on the DAFormer-style
decoder"; EDAPS' released model gives the instance branch its own decoder copy - sharing it is the
cheaper choice on a CPU benchmark and is documented as a deviation.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from balda.models._common import BaldaSegmentor

__all__ = ["PanOutput", "InstanceHead", "PanopticSegmentor"]


class PanOutput(NamedTuple):
    """Decoder features and class logits (as :class:`~balda.models.base.SegOutput`, so every
    semantic strategy reads ``.features`` / ``.logits``), the centre heatmap (B, 1, h, w) and the
    offsets (B, 2, h, w), all at the decoder's output stride."""

    features: torch.Tensor
    logits: torch.Tensor
    center: torch.Tensor
    offset: torch.Tensor


class InstanceHead(nn.Module):
    """``conv1x1(ReLU(BN(conv3x3(x))))`` with ``out_channels`` outputs; the last layer starts at zero
    bias and small weights (N(0, 0.01)), so initial heatmaps and offsets are close to 0."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(hidden)
        self.act = nn.ReLU(inplace=True)
        self.out = nn.Conv2d(hidden, out_channels, 1)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.out.weight, std=0.01)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.bn(self.conv(x))))


class PanopticSegmentor(BaldaSegmentor):
    """``PanopticSegmentor(base, head_channels=64)``: ``base``'s ``backbone`` and ``decode_head``
    (adopted, not wrapped, so parameter names, ImageNet loading, no-decay names and GH's
    ``shared_mode='decoder'`` see the same tree) plus ``center_head`` and ``offset_head``.
    ``forward(images)`` returns a :class:`PanOutput`."""

    def __init__(self, base: BaldaSegmentor, head_channels: int = 64):
        super().__init__()
        if not isinstance(base, BaldaSegmentor):
            raise TypeError(f"PanopticSegmentor needs a balda segmentor, got {type(base).__name__}")
        self.backbone = base.backbone
        self.decode_head = base.decode_head
        self.num_classes = base.num_classes
        self.feature_channels = base.feature_channels
        self.output_stride = base.output_stride
        for attr in ("input_mean", "input_std"):
            if hasattr(base, attr):
                setattr(self, attr, getattr(base, attr))
        self.center_head = InstanceHead(base.feature_channels, head_channels, 1)
        self.offset_head = InstanceHead(base.feature_channels, head_channels, 2)
        self._finish_init(base.freeze_bn)

    def forward(self, images: torch.Tensor) -> PanOutput:
        out = self.decode_head(self.backbone(images))
        return PanOutput(out.features, out.logits, self.center_head(out.features), self.offset_head(out.features))
