"""DANN: domain-adversarial training through a gradient reversal layer (image classification).

Ganin & Lempitsky, "Unsupervised Domain Adaptation by Backpropagation", ICML 2015; Ganin et al.,
JMLR 2016. With the classifier's bottleneck features ``f`` of a source batch and a target batch
(one forward of the concatenated batch, as the released code and tllib do, so BatchNorm sees both
domains) and a domain discriminator ``D`` (:class:`~balda.methods.domain_losses.DomainDiscriminator`):

* ``source.ce`` (task group): ``CE(G(f_s), y_s)`` with the ``source`` class weighting;
* ``domain.adv`` (alignment group, trade-off ``trade_off``):
  ``L_a = 1/2 [BCE(D(R_l(f_s)), 1) + BCE(D(R_l(f_t)), 0)]`` where ``R_l`` is the gradient reversal
  layer (identity forward, ``-l`` times the gradient backward) and
  ``l(p) = 2 / (1 + exp(-gamma p)) - 1`` ramps from 0 to ``lambda_max`` with the training progress
  ``p = t / iters`` (gamma 10). ``D`` minimises ``L_a``; through ``R_l`` the features maximise it.

Gradient harmonization (:mod:`balda.balancing.gh`) measures the conflict between the task gradient
and the gradient the model actually receives from ``L_a`` (the reversed one); ``D``'s parameters are
trained by the model's optimiser (:meth:`DANNStrategy.optimized_with_model`) and are not shared.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from balda.methods.base import StepOutput, Strategy, register_strategy
from balda.methods.domain_losses import DomainDiscriminator, dann_lambda, domain_accuracy, domain_adversarial_loss
from balda.methods.domain_losses import grad_reverse as reverse

__all__ = ["DANNConfig", "DANNStrategy", "forward_both"]


@dataclass
class DANNConfig:
    """DANN (Ganin & Lempitsky 2015): the weight of the domain loss and the discriminator."""

    trade_off: float = 1.0
    #: Width of the discriminator's two hidden layers (1024) and their dropout.
    hidden: int = 1024
    dropout: float = 0.5
    #: ``l(p) = lambda_max (2 / (1 + exp(-gamma p)) - 1)``, p = training progress.
    gamma: float = 10.0
    lambda_max: float = 1.0


def forward_both(model, batch: dict):
    """One forward of the concatenated source and target images; returns ``(out_s, out_t)`` as
    ``(features, logits, logits2)`` triples split back by domain."""
    xs, xt = batch["source"]["image"], batch["target"]["image"]
    out = model(torch.cat([xs, xt]))
    n = xs.shape[0]
    split = [None if v is None else (v[:n], v[n:]) for v in out]
    return tuple(None if v is None else v[0] for v in split), tuple(None if v is None else v[1] for v in split)


@register_strategy("dann", config=DANNConfig, description="domain-adversarial training with gradient reversal")
class DANNStrategy(Strategy):
    """DANN (see module docstring): ``DANNStrategy(model, weighting, cfg, iters)``."""

    def __init__(self, model, weighting, cfg: DANNConfig, iters: int):
        super().__init__(model, weighting)
        self.cfg, self.iters = cfg, max(int(iters), 1)
        self.source_ce = self.make_ce("source")
        self.discriminator = DomainDiscriminator(model.feature_channels, cfg.hidden, cfg.dropout)

    @classmethod
    def from_config(cls, cfg, model, weighting=None):
        return cls(model, weighting, cfg.method.dann, cfg.train.iters)

    def optimized_with_model(self) -> list[torch.nn.Parameter]:
        return list(self.discriminator.parameters())

    def reversal(self, step: int) -> float:
        """``l(p)`` at iteration ``step``."""
        return float(dann_lambda(step / self.iters, self.cfg.gamma, self.cfg.lambda_max))

    def compute_losses(self, model, batch, step):
        (f_s, z_s, _), (f_t, _, _) = forward_both(model, batch)
        ce, logs = self.source_ce(z_s, batch["source"]["label"])
        lam = self.reversal(step)
        d_s, d_t = self.discriminator(reverse(f_s, lam)), self.discriminator(reverse(f_t, lam))
        logs["dann/lambda"] = torch.tensor(lam)
        logs["dann/domain_acc"] = domain_accuracy(d_s, d_t)
        return StepOutput(
            losses={"source.ce": ce, "domain.adv": domain_adversarial_loss(d_s, d_t)},
            weights={"domain.adv": self.cfg.trade_off},
            task=("source.ce",),
            logs=logs,
        )
