"""MCD: maximum classifier discrepancy (image classification), three optimisation steps per iteration.

Saito, Watanabe, Ushiku, Harada, "Maximum Classifier Discrepancy for Unsupervised Domain
Adaptation", CVPR 2018. A generator ``F`` (here the backbone and the bottleneck) and two classifier
heads ``G1``, ``G2`` (``model.num_heads = 2``); with ``d(x) = mean |softmax(G1(F(x))) -
softmax(G2(F(x)))|`` (:func:`~balda.methods.domain_losses.mcd_discrepancy`), per iteration, in this
order (:meth:`MCDStrategy.phases`, one optimiser step each):

* **A** - train F, G1, G2 on the source: ``source.ce = CE(G1) + CE(G2)`` (+ ``lambda_entropy`` times
  the target entropy of both heads, the released code's option, 0 by default);
* **B** - F fixed (its parameters are ``frozen``), train G1, G2 to classify the source and disagree
  on the target: ``source.ce_b`` (task) and ``target.maxdis = -d(x_t)`` (alignment, ``trade_off``);
* **C** - G1, G2 fixed, train F to minimise the discrepancy, ``num_k`` times: ``target.dis = d(x_t)``.

Gradient harmonization, as the GH paper's released MCD code: in step **B**, between the task loss and
the (negated) discrepancy, with the conflict measured on the *generator's* gradients
(``StepOutput.shared`` = F's parameters) while only the classifiers are updated; steps A and C hold a
single group and are unchanged by a harmonizing combiner.
"""

from __future__ import annotations

from dataclasses import dataclass

from balda.methods.base import StepOutput, Strategy, register_strategy
from balda.methods.dann import forward_both
from balda.methods.domain_losses import entropy, mcd_discrepancy

__all__ = ["MCDConfig", "MCDStrategy"]


@dataclass
class MCDConfig:
    """MCD (Saito et al. 2018)."""

    trade_off: float = 1.0
    #: Generator steps (C) per iteration.
    num_k: int = 4
    #: Weight of the target entropy of both heads in steps A and B (released code's option).
    lambda_entropy: float = 0.0

    @classmethod
    def config_checks(cls):
        return {"num_k": lambda x: None if x >= 1 else "must be >= 1"}


@register_strategy("mcd", config=MCDConfig, description="maximum classifier discrepancy (steps A, B, C)")
class MCDStrategy(Strategy):
    """MCD (see module docstring): ``MCDStrategy(model, weighting, cfg)``; the model needs two heads."""

    def __init__(self, model, weighting, cfg: MCDConfig):
        super().__init__(model, weighting)
        if getattr(model, "num_heads", 1) != 2:
            from balda.core.errors import ConfigError

            raise ConfigError("method.name=mcd needs a classifier with two heads: set model.num_heads=2")
        self.cfg = cfg
        self.source_ce1, self.source_ce2 = self.make_ce("source"), self.make_ce("source")
        self._generator = [*model.backbone.parameters(), *model.bottleneck.parameters()]
        self._classifiers = list(model.classifiers.parameters())

    @classmethod
    def from_config(cls, cfg, model, weighting=None):
        return cls(model, weighting, cfg.method.mcd)

    def phases(self, step: int) -> tuple[str, ...]:
        return ("A", "B", *(f"C{k}" for k in range(self.cfg.num_k)))

    def _source_terms(self, model, batch):
        (_, z1_s, z2_s), (_, z1_t, z2_t) = forward_both(model, batch)
        y = batch["source"]["label"]
        ce1, logs = self.source_ce1(z1_s, y)
        ce2, _ = self.source_ce2(z2_s, y)
        loss = ce1 + ce2
        if self.cfg.lambda_entropy:
            loss = loss + self.cfg.lambda_entropy * (entropy(z1_t).mean() + entropy(z2_t).mean())
        return loss, (z1_t, z2_t), logs

    def compute_phase(self, model, batch, step, phase):
        if phase == "A":
            loss, _, logs = self._source_terms(model, batch)
            return StepOutput(losses={"source.ce": loss}, task=("source.ce",), logs=logs)
        if phase == "B":
            loss, (z1_t, z2_t), logs = self._source_terms(model, batch)
            dis = mcd_discrepancy(z1_t, z2_t)
            logs["mcd/discrepancy"] = dis.detach()
            return StepOutput(
                losses={"source.ce_b": loss, "target.maxdis": -dis},
                weights={"target.maxdis": self.cfg.trade_off},
                task=("source.ce_b",),
                logs=logs,
                frozen=tuple(self._generator),
                shared=tuple(self._generator),
            )
        _, (_, z1_t, z2_t) = forward_both(model, batch)
        return StepOutput(
            losses={"target.dis": mcd_discrepancy(z1_t, z2_t)},
            weights={"target.dis": self.cfg.trade_off},
            task=(),
            frozen=tuple(self._classifiers),
        )

    def compute_losses(self, model, batch, step):  # the single-phase view (benchmarks, logging): step B
        return self.compute_phase(model, batch, step, "B")
