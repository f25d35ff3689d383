"""SmallSegNet: a fast CPU segmentor for the embedded low-resolution benchmark.

Not a published architecture; it assembles standard parts so that a batch of 4 x 3 x 128 x 256 runs
in a few tens of milliseconds on two CPU cores while keeping the structure of the large models:

* encoder (output stride 8), widths ``w, 2w, 4w, 4w``: a 3x3/s2 stem, then
  stage 1 (stride 4): one residual BasicBlock (He et al., CVPR 2016) -> the skip feature;
  stage 2 (stride 8): one strided BasicBlock;
  stages 3 and 4 (stride 8): two residual bottleneck blocks each, with the 3x3 convolution dilated
  by 2 and 4 (the DeepLab recipe of keeping resolution while growing the receptive field);
* context: pyramid pooling (Zhao et al., PSPNet, CVPR 2017) with bins 1, 2, 4 on the last map,
  concatenated with it and fused by 1x1 + 3x3 conv (BN + ReLU) to ``2w`` channels;
* decoder (DeepLabV3+-style, Chen et al., ECCV 2018): the context map is upsampled to stride 4 and
  concatenated with a 1x1 projection of the stride-4 skip, then refined by two depthwise-separable
  3x3 convs to ``2w`` channels (the ``features``), followed by a 1x1 classifier at stride 4.

Every convolution is followed by BatchNorm (+ ReLU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from balda.models._common import BaldaSegmentor, init_conv_kaiming
from balda.models.base import SegOutput


def conv_bn(
    in_ch: int, out_ch: int, k: int = 3, stride: int = 1, dilation: int = 1, groups: int = 1, relu: bool = True
) -> nn.Sequential:
    """``Conv(k, bias=False) -> BN [-> ReLU]`` with "same" padding."""
    layers: list[nn.Module] = [
        nn.Conv2d(
            in_ch, out_ch, k, stride=stride, padding=dilation * (k // 2), dilation=dilation, groups=groups, bias=False
        ),
        nn.BatchNorm2d(out_ch),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def sep_conv_bn(in_ch: int, out_ch: int, dilation: int = 1) -> nn.Sequential:
    """Depthwise-separable 3x3 conv: depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU."""
    return nn.Sequential(conv_bn(in_ch, in_ch, 3, dilation=dilation, groups=in_ch), conv_bn(in_ch, out_ch, 1))


class BasicBlock(nn.Module):
    """Residual block ``ReLU(x' + BN(Conv3x3(ReLU(BN(Conv3x3(x))))))``; ``x'`` projected if needed."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv_bn(in_ch, out_ch, 3, stride=stride)
        self.conv2 = conv_bn(out_ch, out_ch, 3, relu=False)
        self.downsample = (
            conv_bn(in_ch, out_ch, 1, stride=stride, relu=False) if stride != 1 or in_ch != out_ch else nn.Identity()
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.downsample(x))


class Bottleneck(nn.Module):
    """Residual bottleneck ``1x1 (C/4) -> dilated 3x3 (C/4) -> 1x1 (C)`` with BN, identity/projection skip."""

    def __init__(self, in_ch: int, out_ch: int, dilation: int = 1, reduction: int = 4):
        super().__init__()
        mid = max(out_ch // reduction, 8)
        self.conv1 = conv_bn(in_ch, mid, 1)
        self.conv2 = conv_bn(mid, mid, 3, dilation=dilation)
        self.conv3 = conv_bn(mid, out_ch, 1, relu=False)
        self.downsample = conv_bn(in_ch, out_ch, 1, relu=False) if in_ch != out_ch else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv3(self.conv2(self.conv1(x))) + self.downsample(x))


class SmallEncoder(nn.Module):
    """Residual conv encoder, output stride 8; returns the four stage maps (strides 4, 8, 8, 8)."""

    def __init__(self, width: int = 32, in_channels: int = 3, return_stem: bool = False):
        super().__init__()
        w = width
        self.return_stem = return_stem
        self.out_channels = [w, 2 * w, 4 * w, 4 * w]
        self.strides = [4, 8, 8, 8]
        self.stem = conv_bn(in_channels, w, 3, stride=2)
        self.layer1 = BasicBlock(w, w, stride=2)
        self.layer2 = BasicBlock(w, 2 * w, stride=2)
        self.layer3 = nn.Sequential(Bottleneck(2 * w, 4 * w, dilation=2), Bottleneck(4 * w, 4 * w, dilation=2))
        self.layer4 = nn.Sequential(Bottleneck(4 * w, 4 * w, dilation=4), Bottleneck(4 * w, 4 * w, dilation=4))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        s = self.stem(x)
        c1 = self.layer1(s)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return [s, c1, c2, c3, c4] if self.return_stem else [c1, c2, c3, c4]


class PyramidPooling(nn.Module):
    """PSPNet pyramid pooling: average-pool to ``b x b`` bins, 1x1 conv, upsample, concat with input."""

    def __init__(self, in_ch: int, branch_ch: int, bins: tuple[int, ...] = (1, 2, 4)):
        super().__init__()
        self.bins = bins
        # No BN on the pooled branches: a 1x1 global-pool map would make BN degenerate at batch 1.
        self.convs = nn.ModuleList(nn.Sequential(nn.Conv2d(in_ch, branch_ch, 1), nn.ReLU(inplace=True)) for _ in bins)
        self.out_channels = in_ch + len(bins) * branch_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        outs = [x]
        for b, conv in zip(self.bins, self.convs):
            y = conv(F.adaptive_avg_pool2d(x, b))
            outs.append(F.interpolate(y, size=size, mode="bilinear", align_corners=False))
        return torch.cat(outs, dim=1)


class SmallHead(nn.Module):
    """Context (pyramid pooling) + stride-4 skip decoder + 1x1 classifier (see module docstring)."""

    def __init__(
        self,
        in_channels: list[int],
        num_classes: int,
        channels: int,
        skip_channels: int,
        stem_channels: int | None = None,
    ):
        super().__init__()
        # Optional stride-2 refinement: upsample the stride-4 features and fuse a projection of the
        # stem output, so thin classes (poles, signs) survive at the embedded benchmark's 128x256.
        self.refine = None
        if stem_channels is not None:
            self.stem_skip = conv_bn(stem_channels, skip_channels, 1)
            self.refine = sep_conv_bn(channels + skip_channels, channels)
        self.ppm = PyramidPooling(in_channels[-1], in_channels[-1] // 4)
        self.context = nn.Sequential(conv_bn(self.ppm.out_channels, channels, 1), conv_bn(channels, channels, 3))
        self.skip = conv_bn(in_channels[0], skip_channels, 1)
        self.fuse = nn.Sequential(sep_conv_bn(channels + skip_channels, channels), sep_conv_bn(channels, channels))
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        init_conv_kaiming(self)
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, feats: list[torch.Tensor]) -> SegOutput:
        stem = None
        if self.refine is not None:
            stem, feats = feats[0], feats[1:]
        skip = self.skip(feats[0])
        ctx = self.context(self.ppm(feats[-1]))
        ctx = F.interpolate(ctx, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        features = self.fuse(torch.cat([ctx, skip], dim=1))
        if stem is not None:
            up = F.interpolate(features, size=stem.shape[-2:], mode="bilinear", align_corners=False)
            features = self.refine(torch.cat([up, self.stem_skip(stem)], dim=1))
        return SegOutput(features=features, logits=self.classifier(features))


class SmallSegNet(BaldaSegmentor):
    """Fast CPU segmentor (see module docstring); logits and ``2*width`` features at stride 4.

    Args:
        num_classes: number of classes K.
        width: base width ``w`` (encoder widths w, 2w, 4w, 4w; decoder 2w). ``width=32`` gives
            64-channel features.
        freeze_bn: freeze the encoder's BatchNorm layers (as for DeepLabV2).
        output_stride: 4, or 2 to add a refinement stage fusing the stem output (stride 2), which the
            embedded benchmark uses so that one- or two-pixel-wide classes are resolved.
    """

    def __init__(self, num_classes: int = 19, width: int = 32, freeze_bn: bool = False, output_stride: int = 4):
        super().__init__()
        if width < 4:
            raise ValueError(f"width must be >= 4, got {width}")
        if output_stride not in (2, 4):
            raise ValueError(f"model.output_stride of the small model must be 2 or 4, got {output_stride}")
        self.backbone = SmallEncoder(width, return_stem=output_stride == 2)
        init_conv_kaiming(self.backbone)
        self.feature_channels = 2 * width
        self.decode_head = SmallHead(
            self.backbone.out_channels,
            num_classes,
            self.feature_channels,
            skip_channels=max(width // 2, 8),
            stem_channels=width if output_stride == 2 else None,
        )
        self.num_classes = num_classes
        self.output_stride = output_stride
        self._finish_init(freeze_bn)
