"""DeepLabV2: dilated ResNet (output stride 8) + ASPP classifier.

Chen et al., "DeepLab: Semantic Image Segmentation with Deep Convolutional Nets, Atrous
Convolution, and Fully Connected CRFs", TPAMI 2018 (arXiv:1606.00915), as used for domain-adaptive
segmentation since AdaptSegNet (Tsai et al., CVPR 2018): ResNet-101 whose ``layer3`` and ``layer4``
keep the resolution of ``layer2`` (stride 8) by dilating their 3x3 convolutions by 2 and 4, followed
by an Atrous Spatial Pyramid Pooling *classifier*: four 3x3 convolutions with dilation rates
6, 12, 18, 24 applied to the ``layer4`` output, whose class scores are summed.

The backbone is a torchvision ResNet (v1.5: the stride sits on the 3x3 convolution of a bottleneck),
so torchvision ImageNet state dicts load into it unchanged (see :mod:`balda.models.weights`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from balda.models._common import BaldaSegmentor
from balda.models.base import SegOutput

#: Supported torchvision ResNets (torchvision is imported lazily: it is slow to import).
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")


def _dilate_basic_layer(layer: nn.Sequential, dilation: int, previous_dilation: int) -> None:
    """Turn a strided BasicBlock stage into a dilated one (torchvision's scheme for bottlenecks).

    torchvision refuses ``replace_stride_with_dilation`` for BasicBlock ResNets, so the stride of the
    first block (its first 3x3 conv and its 1x1 downsample) is set to 1; the first block keeps the
    previous stage's dilation in both 3x3 convs, the following blocks use ``dilation`` (padding =
    dilation keeps the size), exactly the pattern torchvision uses for ``Bottleneck`` stages.
    """
    for i, block in enumerate(layer):
        d = previous_dilation if i == 0 else dilation
        if i == 0:
            block.conv1.stride = (1, 1)
            if block.downsample is not None:
                block.downsample[0].stride = (1, 1)
            block.stride = 1
        for conv in (block.conv1, block.conv2):
            conv.dilation = (d, d)
            conv.padding = (d, d)


class ResNetBackbone(nn.Module):
    """torchvision ResNet-18/34/50/101 without pooling/fc, output stride 8.

    ``forward`` returns the outputs of ``layer1..layer4`` (strides 4, 8, 8, 8); parameter names are
    torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1`` ...), so ImageNet checkpoints load directly.
    """

    #: Checkpoint keys that belong to the ImageNet classifier and are ignored on loading.
    ignored_pretrained_prefixes = ("fc.",)

    def __init__(self, name: str = "resnet101"):
        super().__init__()
        if name not in RESNETS:
            raise ValueError(f"unknown ResNet backbone {name!r}; expected one of {sorted(RESNETS)}")
        from torchvision.models import resnet as tv_resnet

        factory = getattr(tv_resnet, name)
        bottleneck = name in ("resnet50", "resnet101")
        if bottleneck:
            net = factory(weights=None, replace_stride_with_dilation=[False, True, True])
        else:
            net = factory(weights=None)
            _dilate_basic_layer(net.layer3, dilation=2, previous_dilation=1)
            _dilate_basic_layer(net.layer4, dilation=4, previous_dilation=2)
        self.name = name
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        expansion = 4 if bottleneck else 1
        self.out_channels = [64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]
        self.strides = [4, 8, 8, 8]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return [c1, c2, c3, c4]


class ASPPClassifier(nn.Module):
    """DeepLabV2 ASPP classifier: ``logits = sum_d Conv3x3_d(x)`` over dilations ``d``.

    Each branch is a 3x3 convolution (padding = dilation, with bias) from the ``layer4`` features to
    the class scores, initialised N(0, 0.01) with zero bias as in the original Caffe model. The
    returned features are the classifier's input (the last backbone map).
    """

    def __init__(self, in_channels: int, num_classes: int, dilations: Sequence[int] = (6, 12, 18, 24)):
        super().__init__()
        self.dilations = tuple(int(d) for d in dilations)
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=d, dilation=d, bias=True) for d in self.dilations
        )
        for conv in self.convs:
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, feats: list[torch.Tensor]) -> SegOutput:
        x = feats[-1]
        logits = self.convs[0](x)
        for conv in self.convs[1:]:
            logits = logits + conv(x)
        return SegOutput(features=x, logits=logits)


class DeepLabV2(BaldaSegmentor):
    """DeepLabV2 (Chen et al., TPAMI 2018): dilated ResNet + ASPP classifier, logits at stride 8.

    Args:
        backbone: ``resnet18``, ``resnet34``, ``resnet50`` or ``resnet101`` (torchvision layout,
            ``layer3``/``layer4`` dilated by 2/4, output stride 8).
        num_classes: number of classes K.
        freeze_bn: keep the backbone BatchNorm layers in eval mode with frozen affine parameters
            (the usual DeepLabV2 recipe with batch size 1-2).

    ``forward(x)`` returns :class:`SegOutput` with ``features`` = ``layer4`` output
    (``feature_channels`` = 2048 for ResNet-50/101, 512 for ResNet-18/34) and ``logits`` (B, K, H/8, W/8).
    """

    def __init__(
        self,
        backbone: str = "resnet101",
        num_classes: int = 19,
        freeze_bn: bool = False,
        dilations: Sequence[int] = (6, 12, 18, 24),
    ):
        super().__init__()
        self.backbone = ResNetBackbone(backbone)
        self.feature_channels = self.backbone.out_channels[-1]
        self.decode_head = ASPPClassifier(self.feature_channels, num_classes, dilations)
        self.num_classes = num_classes
        self.output_stride = 8
        self._finish_init(freeze_bn)
