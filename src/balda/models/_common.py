"""Shared pieces of the segmentors: the backbone -> head wiring, frozen BatchNorm, no-decay names.

Every concrete model (:class:`~balda.models.deeplabv2.DeepLabV2`,
:class:`~balda.models.daformer.DAFormer`, :class:`~balda.models.small.SmallSegNet`) derives from
:class:`BaldaSegmentor`: its ``backbone`` maps images to a list of feature maps (finest first) and its
``decode_head`` maps that list to a :class:`~balda.models.base.SegOutput`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from balda.models.base import Segmentor, SegOutput

#: Normalisation layers whose affine parameters are excluded from weight decay.
NORM_TYPES: tuple[type[nn.Module], ...] = (
    _BatchNorm,  # BatchNorm1d/2d/3d and SyncBatchNorm
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm,
)
#: Substrings of parameter names treated as position-embedding-like (no weight decay).
POS_EMBED_KEYS: tuple[str, ...] = ("pos_embed", "pos_block", "position", "relative_position", "cls_token")


class BaldaSegmentor(Segmentor):
    """``backbone`` -> ``decode_head`` with optional frozen backbone BatchNorm.

    Subclasses set ``backbone``, ``decode_head``, ``num_classes``, ``feature_channels`` and
    ``output_stride`` and call :meth:`_finish_init` at the end of ``__init__``.

    With ``freeze_bn=True`` every BatchNorm layer of the backbone is kept in eval mode (running
    statistics are used and never updated) and its affine parameters get ``requires_grad=False``;
    the eval mode survives later ``.train()`` calls (:meth:`train` re-applies it), and also
    ``nn.SyncBatchNorm.convert_sync_batchnorm`` (SyncBatchNorm is a ``_BatchNorm``, the converted
    layer keeps the same ``Parameter`` objects).
    """

    output_stride: int
    freeze_bn: bool = False

    def _finish_init(self, freeze_bn: bool) -> None:
        self.freeze_bn = bool(freeze_bn)
        if self.freeze_bn:
            for m in self.backbone.modules():
                if isinstance(m, _BatchNorm):
                    for p in m.parameters(recurse=False):
                        p.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True):  # noqa: D401 - nn.Module API
        super().train(mode)
        if self.freeze_bn:
            for m in self.backbone.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def forward(self, images: torch.Tensor) -> SegOutput:
        """Return decoder features and logits at ``1/output_stride`` of the input size."""
        return self.decode_head(self.backbone(images))

    def no_decay_parameter_names(self) -> set[str]:
        """Names (as in ``named_parameters()``) that the AdamW recipe excludes from weight decay.

        These are the weights and biases of normalisation layers (BatchNorm/SyncBatchNorm,
        LayerNorm, GroupNorm, InstanceNorm) and position-embedding-like parameters (names holding
        ``pos_embed``, ``pos_block``, ``position``, ``cls_token``), following the DAFormer recipe
        (Hoyer et al., CVPR 2022: ``decay_mult=0`` for ``norm`` and ``pos_block``).
        """
        names: set[str] = set()
        for mod_name, module in self.named_modules():
            if isinstance(module, NORM_TYPES):
                for p_name, _ in module.named_parameters(recurse=False):
                    names.add(f"{mod_name}.{p_name}" if mod_name else p_name)
        for name, _ in self.named_parameters():
            if any(key in name for key in POS_EMBED_KEYS):
                names.add(name)
        return names


def init_conv_kaiming(module: nn.Module) -> None:
    """He (fan-out, ReLU) init of convolutions, unit/zero init of BatchNorm, as in torchvision."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (_BatchNorm, nn.GroupNorm)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
