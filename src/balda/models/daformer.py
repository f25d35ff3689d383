"""DAFormer: MiT encoder + context-aware fusion decoder.

Hoyer, Dai, Van Gool, "DAFormer: Improving Network Architectures and Training Strategies for
Domain-Adaptive Semantic Segmentation", CVPR 2022 (arXiv:2111.14887), Sec. 3.2 / Fig. 3:

1. each encoder level ``F_i`` (strides 4, 8, 16, 32) is embedded to ``C_e = 256`` channels by a
   linear layer (a 1x1 projection without norm or activation);
2. the embedded maps are bilinearly upsampled to the stride-4 size and concatenated (4 * 256 ch);
3. *context-aware fusion*: parallel branches with dilation rates 1, 6, 12, 18, the rate-1 branch a
   1x1 conv and the others depthwise-separable 3x3 convs (depthwise dilated 3x3 + BN + ReLU, then
   pointwise 1x1 + BN + ReLU); every branch maps to 256 channels with BN + ReLU; their outputs are
   concatenated and fused by a 3x3 conv bottleneck to 256 channels + BN + ReLU;
4. dropout (p = 0.1) and a 1x1 classifier.

The fused 256-channel map (before dropout) is returned as ``features``; logits are at stride 4.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from balda.models._common import BaldaSegmentor
from balda.models.base import SegOutput
from balda.models.mit import MIT_SETTINGS, mit


def _conv_bn_relu(in_ch: int, out_ch: int, k: int, dilation: int = 1, groups: int = 1) -> nn.Sequential:
    pad = dilation * (k // 2)
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, k, padding=pad, dilation=dilation, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class LinearEmbed(nn.Module):
    """Per-pixel linear projection of a (B, C, H, W) map to (B, E, H, W) (SegFormer/DAFormer MLP)."""

    def __init__(self, in_channels: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_channels, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        x = self.proj(x.flatten(2).transpose(1, 2))
        return x.transpose(1, 2).reshape(b, -1, h, w)


class SeparableASPP(nn.Module):
    """DAFormer fusion: 1x1 branch + depthwise-separable dilated 3x3 branches, concat, 3x3 bottleneck."""

    def __init__(self, in_channels: int, channels: int = 256, dilations: Sequence[int] = (1, 6, 12, 18)):
        super().__init__()
        self.dilations = tuple(int(d) for d in dilations)
        branches = []
        for d in self.dilations:
            if d == 1:
                branches.append(_conv_bn_relu(in_channels, channels, 1))
            else:
                branches.append(
                    nn.Sequential(
                        _conv_bn_relu(in_channels, in_channels, 3, dilation=d, groups=in_channels),  # depthwise
                        _conv_bn_relu(in_channels, channels, 1),  # pointwise
                    )
                )
        self.branches = nn.ModuleList(branches)
        self.bottleneck = _conv_bn_relu(len(branches) * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(torch.cat([branch(x) for branch in self.branches], dim=1))


class DAFormerHead(nn.Module):
    """DAFormer decoder (Hoyer et al., CVPR 2022): embed -> upsample -> concat -> sep. ASPP -> classifier.

    Args:
        in_channels: channels of the four encoder levels.
        num_classes: number of classes K.
        embed_dim: embedding / fusion width (256).
        dilations: fusion dilation rates (1, 6, 12, 18).
        dropout: dropout before the classifier (0.1).

    ``forward(feats)`` returns :class:`SegOutput` (features: (B, 256, H/4, W/4), logits: (B, K, H/4, W/4)).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int = 19,
        embed_dim: int = 256,
        dilations: Sequence[int] = (1, 6, 12, 18),
        dropout: float = 0.1,
    ):
        super().__init__()
        self.embed_layers = nn.ModuleList(LinearEmbed(c, embed_dim) for c in in_channels)
        self.fuse_layer = SeparableASPP(len(in_channels) * embed_dim, embed_dim, dilations)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(embed_dim, num_classes, 1)
        self.channels = embed_dim
        for m in self.fuse_layer.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.conv_seg.weight, 0.0, 0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, feats: Sequence[torch.Tensor]) -> SegOutput:
        size = feats[0].shape[-2:]
        embedded = []
        for x, embed in zip(feats, self.embed_layers):
            x = embed(x)
            if x.shape[-2:] != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            embedded.append(x)
        features = self.fuse_layer(torch.cat(embedded, dim=1))
        return SegOutput(features=features, logits=self.conv_seg(self.dropout(features)))


class DAFormer(BaldaSegmentor):
    """DAFormer segmentor: MiT encoder (SegFormer) + :class:`DAFormerHead`, logits at stride 4.

    Args:
        backbone: ``mit_b0`` ... ``mit_b5`` (DAFormer uses ``mit_b5``).
        num_classes: number of classes K.
        freeze_bn: accepted for a uniform interface; MiT has no BatchNorm, so it has no effect.
        drop_path_rate: stochastic depth of the encoder (0.1).
    """

    def __init__(
        self,
        backbone: str = "mit_b5",
        num_classes: int = 19,
        freeze_bn: bool = False,
        drop_path_rate: float = 0.1,
        embed_dim: int = 256,
    ):
        super().__init__()
        if backbone not in MIT_SETTINGS:
            raise ValueError(f"unknown DAFormer backbone {backbone!r}; expected one of {sorted(MIT_SETTINGS)}")
        self.backbone = mit(backbone, drop_path_rate=drop_path_rate)
        self.decode_head = DAFormerHead(self.backbone.out_channels, num_classes, embed_dim=embed_dim)
        self.num_classes = num_classes
        self.feature_channels = embed_dim
        self.output_stride = 4
        self._finish_init(freeze_bn)
