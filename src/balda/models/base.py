"""The segmentor contract shared by every model.

A segmentor is an ``nn.Module`` with two children, ``backbone`` and ``decode_head``, whose
``forward(images)`` returns a :class:`SegOutput`: the decoder features (input of the final 1x1
classifier) and the class logits, both at the decoder's output stride. CPSL, GBW, the ImageNet
feature distance and gradient harmonization need both (docs/baselines.md).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class SegOutput(NamedTuple):
    features: torch.Tensor  # (B, C, h, w) decoder features
    logits: torch.Tensor  # (B, K, h, w) class scores


class Segmentor(nn.Module):
    """Base class: ``backbone`` -> ``decode_head`` -> :class:`SegOutput`."""

    num_classes: int
    feature_channels: int

    backbone: nn.Module
    decode_head: nn.Module

    def forward(self, images: torch.Tensor) -> SegOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def backbone_parameters(self):
        return self.backbone.parameters()

    def head_parameters(self):
        return self.decode_head.parameters()
