"""Entropy minimisation on the target (MinEnt, Vu et al., "AdvEnt", CVPR 2019).

Losses per step:

* ``'source.ce'`` (task group): ``CE(f(x_s), y_s)`` with the ``'source'`` class weighting computed
  from the (detached) source logits at label resolution;
* ``'target.ent'`` (alignment group, trade-off ``lambda_ent``, 0.001 in AdvEnt): the mean over
  target pixels of the normalised entropy ``E_i = -(1/log K) sum_c P_ic log P_ic``,
  ``P = softmax(f(x_t))`` upsampled (bilinear, as AdvEnt) to the target label/image resolution.
  ``E`` lies in [0, 1]: 1 for a uniform prediction, 0 for a one-hot one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from balda.methods.base import StepOutput, Strategy, WeightingFactory, register_strategy
from balda.methods.losses import entropy_map, resize_logits
from balda.models.base import Segmentor


@dataclass
class MinEntConfig:
    lambda_ent: float = 0.001


__all__ = ["MinEntStrategy"]


@register_strategy("minent", config=MinEntConfig, description="entropy minimisation on the target (AdvEnt's MinEnt)")
class MinEntStrategy(Strategy):
    """``MinEntStrategy(model, weighting, cfg, num_classes, mean, std, seed=0)`` (see module docstring)."""

    def __init__(
        self,
        model: Segmentor,
        weighting: Optional[WeightingFactory],
        cfg: MinEntConfig,
        num_classes: int,
        mean=None,
        std=None,
        seed: int = 0,
    ):
        super().__init__(model, weighting)
        self.cfg = cfg
        self.num_classes = int(num_classes)
        self.seed = int(seed)  # deterministic strategy; kept for the common signature
        self.source_ce = self.make_ce("source")

    @classmethod
    def from_config(cls, cfg, model, weighting=None):
        return cls(model, weighting, cfg.method.minent, cfg.model.num_classes, seed=cfg.train.seed)

    def compute_losses(self, model: Segmentor, batch: dict, step: int) -> StepOutput:
        src, tgt = batch["source"], batch["target"]
        src_ce, logs = self.source_ce(model(src["image"]).logits, src["label"])
        logits_t = model(tgt["image"]).logits
        if logits_t.dim() == 2:  # image classification: the entropy of each image's prediction
            ent = entropy_map(logits_t).mean()
        else:
            size_t = tuple(tgt["label"].shape[-2:]) if "label" in tgt else tuple(tgt["image"].shape[-2:])
            ent = entropy_map(resize_logits(logits_t, size_t)).mean()
        logs["minent/target_entropy"] = ent.detach()
        return StepOutput(
            losses={"source.ce": src_ce, "target.ent": ent},
            weights={"target.ent": self.cfg.lambda_ent},
            task=("source.ce",),
            logs=logs,
        )
