"""CDAN and CDAN+E: conditional domain-adversarial training (image classification).

Long, Cao, Wang, Jordan, "Conditional Adversarial Domain Adaptation", NeurIPS 2018. As DANN
(:mod:`balda.methods.dann`), but the discriminator sees the multilinear map of the features and the
class predictions, ``h = f (x) g`` with ``g = softmax(G(f))`` (detached, as tllib does), flattened;
when ``dim(f) K > 4096`` the randomized map ``(R_f f) * (R_g g) / sqrt(d)`` (d = 1024, fixed random
matrices) replaces it (:class:`~balda.methods.domain_losses.CDANMap`):

* ``source.ce`` (task): ``CE(G(f_s), y_s)``;
* ``domain.adv`` (alignment, ``trade_off``): ``L_a = 1/2 [sum_i w^s_i BCE(D(R_l(h^s_i)), 1) +
  sum_j w^t_j BCE(D(R_l(h^t_j)), 0)]`` with uniform weights ``1/n`` (CDAN), or with ``entropy``
  (CDAN+E) the entropy-aware weights ``w = 1 + exp(-H(g))`` normalised within each domain to sum
  to 1, so confident samples count more. ``R_l`` is DANN's gradient reversal with its schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from balda.methods.base import StepOutput, Strategy, register_strategy
from balda.methods.dann import forward_both
from balda.methods.domain_losses import (
    CDANMap,
    DomainDiscriminator,
    cdan_entropy_weights,
    dann_lambda,
    domain_accuracy,
    domain_adversarial_loss,
    grad_reverse,
)

__all__ = ["CDANConfig", "CDANStrategy"]


@dataclass
class CDANConfig:
    """CDAN(+E) (Long et al. 2018)."""

    trade_off: float = 1.0
    #: CDAN+E: entropy-aware sample weights 1 + exp(-H) on the domain loss.
    entropy: bool = False
    #: Force (true) or forbid (false) the randomized multilinear map; null = when dim(f) K > 4096.
    randomized: Optional[bool] = None
    random_dim: int = 1024
    hidden: int = 1024
    dropout: float = 0.5
    gamma: float = 10.0
    lambda_max: float = 1.0


@register_strategy("cdan", config=CDANConfig, description="conditional adversarial adaptation (CDAN, CDAN+E)")
class CDANStrategy(Strategy):
    """CDAN / CDAN+E (see module docstring): ``CDANStrategy(model, weighting, cfg, iters)``."""

    def __init__(self, model, weighting, cfg: CDANConfig, iters: int):
        super().__init__(model, weighting)
        self.cfg, self.iters = cfg, max(int(iters), 1)
        self.source_ce = self.make_ce("source")
        self.map = CDANMap(model.feature_channels, model.num_classes, cfg.randomized, cfg.random_dim)
        self.discriminator = DomainDiscriminator(self.map.out_features, cfg.hidden, cfg.dropout)

    @classmethod
    def from_config(cls, cfg, model, weighting=None):
        return cls(model, weighting, cfg.method.cdan, cfg.train.iters)

    def optimized_with_model(self) -> list[torch.nn.Parameter]:
        return list(self.discriminator.parameters())

    def compute_losses(self, model, batch, step):
        (f_s, z_s, _), (f_t, z_t, _) = forward_both(model, batch)
        ce, logs = self.source_ce(z_s, batch["source"]["label"])
        lam = float(dann_lambda(step / self.iters, self.cfg.gamma, self.cfg.lambda_max))
        h_s = self.map(f_s, torch.softmax(z_s, 1).detach())
        h_t = self.map(f_t, torch.softmax(z_t, 1).detach())
        d_s, d_t = self.discriminator(grad_reverse(h_s, lam)), self.discriminator(grad_reverse(h_t, lam))
        w_s, w_t = cdan_entropy_weights(z_s, z_t) if self.cfg.entropy else (None, None)
        logs["cdan/lambda"] = torch.tensor(lam)
        logs["cdan/domain_acc"] = domain_accuracy(d_s, d_t)
        return StepOutput(
            losses={"source.ce": ce, "domain.adv": domain_adversarial_loss(d_s, d_t, w_s, w_t)},
            weights={"domain.adv": self.cfg.trade_off},
            task=("source.ce",),
            logs=logs,
        )
