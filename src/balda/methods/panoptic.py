"""Panoptic strategies (``task: panoptic``): source-only, target oracle and EDAPS-style self-training.

Losses of Panoptic-DeepLab (Cheng et al., CVPR 2020) as EDAPS (Saha et al., ICCV 2023) trains them,
with the predictions of :class:`~balda.models.panoptic.PanopticSegmentor` upsampled (bilinear) to
the label resolution and the targets of :func:`balda.data.panoptic.panoptic_targets`:

* ``<domain>.ce``: the semantic cross-entropy with the ``<domain>`` class weighting (GBW, ...;
  :class:`~balda.methods.losses.WeightedCE`) and the small-instance pixel weights ``s_i``
  (``semantic_weight``: 3 on instances below ``panoptic.small_area`` px);
* ``<domain>.center`` (weight ``panoptic.center_loss`` = 200): ``sum_i c_i (Z_i - Z*_i)^2 / sum_i c_i``,
  the weighted MSE of the centre heatmap, ``c`` = 0 on void and crowd pixels;
* ``<domain>.offset`` (weight ``panoptic.offset_loss`` = 0.01): ``sum_i o_i |O_i - O*_i|_1 / sum_i o_i``,
  the L1 of the (dy, dx) offsets summed over both channels, over thing pixels (``o_i`` = 1);

the denominators are ``max(sum w, 1)``, so an empty weight map gives 0 (with a graph).
Source-only trains the three source terms, the oracle the three target terms (task group in both).

Self-training (:class:`PanopticSelfTrainingStrategy`, EDAPS) is DACS/DAFormer self-training
(:class:`~balda.methods.self_training.SelfTrainingStrategy`: EMA teacher, ClassMix, the same
options under ``method.panoptic_self_training``) with instance pseudo-labels: the teacher's
semantic, centre and offset predictions on the un-augmented target go through the panoptic
post-processing (:class:`~balda.models.panoptic_post.PanopticPostProcess`), giving a pseudo
instance map; ClassMix pastes the source classes *with their instances* (source instance ids are
shifted past the pseudo ones), and the Panoptic-DeepLab targets are recomputed on the mixed
semantic and instance maps. Every mixed term carries the ClassMix pixel weight ``m = M + (1-M) q``
(1 on pasted source pixels, the teacher's confidence share ``q`` elsewhere); the small-instance
weight applies to the pasted source pixels only. The mixed terms ``target.ce``, ``target.center``
and ``target.offset`` are the alignment group (trade-off ``lambda_target`` times the loss weights).
GBW weights both semantic CE terms through the usual class weighting (``balancing.class_weights``).
"""

from __future__ import annotations

import torch

from balda.methods.base import StepOutput, Strategy, register_strategy
from balda.methods.losses import masked_mean
from balda.methods.self_training import SelfTrainingConfig, SelfTrainingStrategy

__all__ = [
    "center_loss",
    "offset_loss",
    "upsample_instance",
    "PanopticSourceOnlyStrategy",
    "PanopticOracleStrategy",
    "PanopticSelfTrainingStrategy",
]

_TARGET_KEYS = ("center", "center_weight", "offset", "offset_weight", "semantic_weight")


def upsample_instance(out, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The centre heatmap (B, H, W) and offsets (B, 2, H, W) of a panoptic output, bilinear to ``size``
    (offsets are in input pixels, so their values are not rescaled)."""
    import torch.nn.functional as F

    center, offset = out.center, out.offset
    if tuple(center.shape[-2:]) != tuple(size):
        center = F.interpolate(center.float(), size=size, mode="bilinear", align_corners=False)
        offset = F.interpolate(offset.float(), size=size, mode="bilinear", align_corners=False)
    return center[:, 0].float(), offset.float()


def center_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``sum_i w_i (p_i - t_i)^2 / max(sum_i w_i, 1)`` over (B, H, W) maps (:func:`masked_mean`)."""
    w = weight.to(pred.dtype)
    return masked_mean((w * (pred - target.to(pred.dtype)) ** 2).sum(), w.sum())


def offset_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``sum_i w_i (|dy_i - dy*_i| + |dx_i - dx*_i|) / max(sum_i w_i, 1)`` for (B, 2, H, W) offsets
    and (B, H, W) weights (:func:`masked_mean`)."""
    w = weight.to(pred.dtype)
    return masked_mean((w[:, None] * (pred - target.to(pred.dtype)).abs()).sum(), w.sum())


def _check_panoptic(out) -> None:
    if not hasattr(out, "center"):
        from balda.core.errors import ConfigError

        raise ConfigError("the panoptic strategies need a panoptic model: set task: panoptic")


class _PanopticTerms:
    """The three panoptic terms of one labelled part of a batch (module docstring)."""

    def panoptic_terms(self, ce, out, part: dict, prefix: str, losses: dict, weights: dict, logs: dict, scale=1.0):
        _check_panoptic(out)
        pc = self.panoptic_cfg
        size = tuple(part["label"].shape[-2:])
        center, offset = upsample_instance(out, size)
        losses[f"{prefix}.ce"], ce_logs = ce(out.logits, part["label"], pixel_weights=part.get("semantic_weight"))
        logs.update(ce_logs)
        losses[f"{prefix}.center"] = center_loss(center, part["center"], part["center_weight"])
        losses[f"{prefix}.offset"] = offset_loss(offset, part["offset"], part["offset_weight"])
        weights[f"{prefix}.center"] = pc.center_loss * scale
        weights[f"{prefix}.offset"] = pc.offset_loss * scale
        if scale != 1.0:
            weights[f"{prefix}.ce"] = scale
        return (f"{prefix}.ce", f"{prefix}.center", f"{prefix}.offset")


@register_strategy("panoptic_source_only", description="panoptic: supervised on the source only (the lower bound)")
class PanopticSourceOnlyStrategy(_PanopticTerms, Strategy):
    """Source-only: ``L = CE_s + 200 MSE_center,s + 0.01 L1_offset,s`` (module docstring)."""

    domain = "source"

    def __init__(self, model, weighting=None, panoptic_cfg=None):
        super().__init__(model, weighting)
        from balda.config.schema import PanopticConfig

        self.panoptic_cfg = panoptic_cfg or PanopticConfig()
        self.ce = self.make_ce(self.domain)

    @classmethod
    def from_config(cls, cfg, model, weighting=None):
        return cls(model, weighting, cfg.panoptic)

    def compute_losses(self, model, batch, step):
        part = batch[self.domain]
        losses, weights, logs = {}, {}, {}
        task = self.panoptic_terms(self.ce, model(part["image"]), part, self.domain, losses, weights, logs)
        return StepOutput(losses=losses, weights=weights, task=task, logs=logs)


@register_strategy("panoptic_oracle", description="panoptic: supervised on the labelled target (the upper bound)")
class PanopticOracleStrategy(PanopticSourceOnlyStrategy):
    """Target oracle: the three terms on the labelled target."""

    domain = "target"
    uses_target_labels = True


@register_strategy(
    "panoptic_self_training",
    config=SelfTrainingConfig,
    description="panoptic mean-teacher self-training with instance pseudo-labels (EDAPS)",
)
class PanopticSelfTrainingStrategy(_PanopticTerms, SelfTrainingStrategy):
    """EDAPS-style self-training (module docstring); options under ``method.panoptic_self_training``
    (those of self-training), the panoptic ones under ``panoptic``."""

    panoptic_cfg = None
    things: tuple[int, ...] = ()
    post = None

    def configure(self, cfg) -> None:
        from balda.data.panoptic import thing_ids
        from balda.models.panoptic_post import panoptic_postprocess_from_config

        self.panoptic_cfg = cfg.panoptic
        self.things = tuple(thing_ids(cfg.eval.view))
        self.post = panoptic_postprocess_from_config(cfg)

    def add_source_losses(self, out_s, src, losses, weights, logs, task) -> None:
        task[:] = list(self.panoptic_terms(self.source_ce, out_s, src, "source", losses, weights, logs))

    def mixed_extras(self, mask, src, pair, t_out, pseudo, y_mix) -> dict:
        from balda.data.panoptic import LABEL_DIVISOR, panoptic_targets

        _check_panoptic(t_out)
        size = tuple(pseudo.shape[-2:])
        center_t, offset_t = upsample_instance(t_out, size)
        pan, _ = self.post(pseudo, center_t, offset_t)
        cls = torch.div(pan, LABEL_DIVISOR, rounding_mode="floor")
        lut = torch.zeros(256, dtype=torch.bool, device=pan.device)
        lut[list(self.things)] = True
        is_thing = (pan >= 0) & lut[cls.clamp(0, 255)]
        ins_t = torch.where(is_thing, pan % LABEL_DIVISOR, torch.zeros_like(pan))
        ins_s = src["instance"].long()
        sem_w_s = src["semantic_weight"]
        if pair is not None:
            ins_s, sem_w_s = ins_s.index_select(0, pair), sem_w_s.index_select(0, pair)
        shift = ins_t.flatten(1).amax(1).view(-1, 1, 1) + 1  # source ids after the pseudo ones
        ins_mix = torch.where(mask, torch.where(ins_s > 0, ins_s + shift, torch.zeros_like(ins_s)), ins_t)
        pc = self.panoptic_cfg
        per = [
            panoptic_targets(
                y_mix[b],
                ins_mix[b],
                sigma=pc.sigma,
                small_area=pc.small_area,
                small_weight=pc.small_weight,
                things=self.things,
                weight_small=pc.weight_small,
            )
            for b in range(y_mix.shape[0])
        ]
        extra = {k: torch.stack([t[k] for t in per]) for k in _TARGET_KEYS}
        extra["semantic_weight"] = torch.where(
            mask, sem_w_s.to(extra["semantic_weight"].dtype), torch.ones_like(extra["semantic_weight"])
        )
        extra["pseudo_instances"] = (ins_t.flatten(1) > 0).any(1).float().mean()
        return extra

    def add_target_losses(self, out_m, y_mix, w_mix, mask, extra, losses, weights, logs) -> None:
        part = {
            "label": y_mix,
            "semantic_weight": w_mix * extra["semantic_weight"],
            "center": extra["center"],
            "center_weight": extra["center_weight"] * w_mix,
            "offset": extra["offset"],
            "offset_weight": extra["offset_weight"] * w_mix,
        }
        self.panoptic_terms(self.target_ce, out_m, part, "target", losses, weights, logs, scale=self.cfg.lambda_target)
        logs["pan/pseudo_images_with_things"] = extra["pseudo_instances"]
