"""Tiny segmentors, batches and a recording class-weighting module for the strategy tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from balda.models.base import Segmentor, SegOutput

MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
K = 5


class TinyBackbone(nn.Module):
    """Two strided convs (BN on the first); returns the list of stage maps (strides 2 and 4)."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, 2, 1), nn.ReLU())

    def forward(self, x):
        f1 = self.stage1(x)
        return [f1, self.stage2(f1)]


class TinyHead(nn.Module):
    def __init__(self, in_ch: int, feat_ch: int, num_classes: int):
        super().__init__()
        self.fuse = nn.Sequential(nn.Conv2d(in_ch, feat_ch, 1), nn.ReLU())
        self.dropout = nn.Dropout2d(0.1)
        self.conv_seg = nn.Conv2d(feat_ch, num_classes, 1)

    def forward(self, feats):
        f = self.fuse(feats[-1])
        return SegOutput(features=f, logits=self.conv_seg(self.dropout(f)))


class TinySegmentor(Segmentor):
    """Stride-4 conv segmentor with BatchNorm and dropout (so train/eval modes matter)."""

    def __init__(self, num_classes: int = K, width: int = 8):
        super().__init__()
        self.num_classes = num_classes
        self.feature_channels = width
        self.backbone = TinyBackbone(width)
        self.decode_head = TinyHead(2 * width, width, num_classes)

    def forward(self, images):
        return self.decode_head(self.backbone(images))


class ConstSegmentor(Segmentor):
    """Returns a learnable logit map (ignores the image content): pins losses on known outputs."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.num_classes = logits.shape[1]
        self.feature_channels = 1
        self.backbone = nn.Identity()
        self.decode_head = nn.Identity()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, images):
        lg = self.logits.expand(images.shape[0], -1, -1, -1)
        return SegOutput(features=lg, logits=lg)


class RecordingWeighting(nn.Module):
    """GBW-like dummy: records the (logits, labels) it is called with, returns fixed class weights."""

    def __init__(self, weights: torch.Tensor | None):
        super().__init__()
        self.weights = weights
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, logits, labels):
        self.calls.append((logits.detach().clone(), labels.clone()))
        return self.weights


def make_model(seed: int = 0, num_classes: int = K) -> TinySegmentor:
    torch.manual_seed(seed)
    return TinySegmentor(num_classes)


def make_batch(B: int = 2, H: int = 32, W: int = 32, num_classes: int = K, seed: int = 0, Bt: int | None = None):
    """Random normalised images; source labels with blocks of a few classes and an ignore stripe."""
    g = torch.Generator().manual_seed(seed)
    Bt = B if Bt is None else Bt
    rgb_s = torch.rand(B, 3, H, W, generator=g) * 255
    rgb_t = torch.rand(Bt, 3, H, W, generator=g) * 255
    ys = torch.randint(0, num_classes, (B, H // 8, W // 8), generator=g)
    ys = ys.repeat_interleave(8, 1).repeat_interleave(8, 2)
    ys[:, :2] = 255
    return {
        "source": {"image": (rgb_s - MEAN) / STD, "label": ys, "index": torch.arange(B)},
        "target": {
            "image": (rgb_t - MEAN) / STD,
            "label": torch.full((Bt, H, W), 255, dtype=torch.long),
            "index": torch.arange(Bt),
        },
    }


@pytest.fixture
def model():
    return make_model()


@pytest.fixture
def batch():
    return make_batch()
