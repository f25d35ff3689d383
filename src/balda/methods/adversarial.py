"""Output-space adversarial alignment: AdaptSegNet (softmax maps) and AdvEnt (entropy maps).

The segmentor ``f`` (generator) and a fully convolutional discriminator ``D`` play the usual game
on segmentation *outputs*, upsampled (bilinear) to the label/image resolution as in both papers:

* D input ``m(x)``: ``P = softmax(f(x))`` (``input='softmax'``, AdaptSegNet, Tsai et al. CVPR 2018)
  or the weighted self-information ``I = -P log P / log K`` per channel (``input='entropy'``,
  AdvEnt, Vu et al. CVPR 2019; AdvEnt divides by ``log2 K`` with ``log2``, the same map).
* Generator step (:meth:`AdversarialStrategy.compute_losses`), D's parameters frozen
  (``requires_grad=False`` while its graph is built, so D receives no gradient):
    - ``'source.ce'`` (task group): ``CE(f(x_s), y_s)`` with the ``'source'`` class weighting;
    - ``'target.adv'`` (alignment, trade-off ``lambda_adv``): fool D into calling target maps
      source, ``BCEWithLogits(D(m(x_t)), 0)`` with source label 0 (AdvEnt's convention), or
      ``MSE(D(m(x_t)), 0)`` with ``gan='lsgan'``;
    - ``'target.ent'`` (alignment, trade-off ``lambda_ent``, only if ``lambda_ent > 0``): MinEnt,
      the mean normalised entropy of the target predictions (AdvEnt's "AdvEnt+MinEnt").
* Discriminator step (:meth:`AdversarialStrategy.after_step`, after the segmentor's optimiser
  step) on the maps of the same iteration, detached:
  ``L_D = 1/2 BCE(D(m(x_s)), 0) + 1/2 BCE(D(m(x_t)), 1)`` (LSGAN: MSE), one Adam step
  (lr 1e-4, betas (0.9, 0.99)), optionally with AdvEnt's poly decay of D's learning rate.

D and its optimiser are owned by the strategy: D is not among :meth:`Strategy.optimized_with_model`
(the trainer's optimiser never sees it) and the optimiser state is saved through
``get_extra_state``/``set_extra_state``, so the strategy's ``state_dict`` restores both.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from balda.methods.base import StepOutput, Strategy, WeightingFactory, register_strategy
from balda.methods.losses import entropy_map, resize_logits
from balda.models.base import Segmentor


@dataclass
class AdversarialConfig:
    """Output-space adversarial alignment (AdaptSegNet on softmax, AdvEnt on self-information)."""

    input: Literal["entropy", "softmax"] = "entropy"
    gan: Literal["bce", "lsgan"] = "bce"
    lambda_adv: float = 0.001
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    ndf: int = 64
    #: Add MinEnt on the target besides the adversarial loss (AdvEnt "AdvEnt+MinEnt"); 0 = off.
    lambda_ent: float = 0.0


__all__ = ["Discriminator", "AdversarialStrategy", "discriminator_input", "gan_loss", "SOURCE_LABEL", "TARGET_LABEL"]

#: Domain labels of the discriminator (AdvEnt: source 0, target 1).
SOURCE_LABEL = 0.0
TARGET_LABEL = 1.0


class Discriminator(nn.Module):
    """Fully convolutional discriminator of AdaptSegNet / AdvEnt.

    ``Conv4x4/2(K->ndf) -> LReLU(0.2) -> Conv4x4/2(ndf->2ndf) -> LReLU -> Conv4x4/2(2ndf->4ndf) ->
    LReLU -> Conv4x4/2(4ndf->8ndf) -> LReLU -> Conv4x4/2(8ndf->1)`` (padding 1): a map of domain
    logits at 1/32 of the input resolution.
    """

    def __init__(self, num_classes: int, ndf: int = 64):
        super().__init__()
        chans = [num_classes, ndf, 2 * ndf, 4 * ndf, 8 * ndf]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        layers.append(nn.Conv2d(chans[-1], 1, 4, stride=2, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def discriminator_input(logits: torch.Tensor, kind: str, size: Optional[tuple[int, int]] = None) -> torch.Tensor:
    """D's input map from logits (upsampled to ``size`` first): ``softmax`` -> ``P``;
    ``entropy`` -> ``-P log P / log K`` per channel (log-softmax based, finite)."""
    if size is not None:
        logits = resize_logits(logits, size)
    logp = F.log_softmax(logits.float(), dim=1)
    p = logp.exp()
    if kind == "softmax":
        return p
    if kind == "entropy":
        return -(p * logp) / math.log(logits.shape[1])
    raise ValueError(f"adversarial input must be 'softmax' or 'entropy', got {kind!r}")


def gan_loss(d_out: torch.Tensor, label: float, gan: str = "bce") -> torch.Tensor:
    """``BCEWithLogits(d_out, label)`` (mean over positions) or, for ``lsgan``, ``mean((d_out - label)^2)``."""
    target = torch.full_like(d_out, float(label))
    if gan == "bce":
        return F.binary_cross_entropy_with_logits(d_out, target)
    if gan == "lsgan":
        return F.mse_loss(d_out, target)
    raise ValueError(f"gan must be 'bce' or 'lsgan', got {gan!r}")


@register_strategy(
    "adversarial", config=AdversarialConfig, description="output-space adversarial alignment (AdaptSegNet / AdvEnt)"
)
class AdversarialStrategy(Strategy):
    """AdaptSegNet / AdvEnt output-space alignment (see module docstring).

    ``AdversarialStrategy(model, weighting, cfg, num_classes, mean, std, seed=0, max_iters=None,
    d_poly_power=0.9)``. With ``max_iters`` set, D's learning rate follows AdvEnt's poly schedule
    ``lr (1 - t/max_iters)^d_poly_power``; otherwise it is constant. Attributes: ``discriminator``,
    ``d_optimizer``.
    """

    def __init__(
        self,
        model: Segmentor,
        weighting: Optional[WeightingFactory],
        cfg: AdversarialConfig,
        num_classes: int,
        mean=None,
        std=None,
        seed: int = 0,
        max_iters: Optional[int] = None,
        d_poly_power: float = 0.9,
    ):
        super().__init__(model, weighting)
        self.cfg = cfg
        self.num_classes = int(num_classes)
        self.seed = int(seed)  # no randomness in this strategy; kept for the common signature
        self.max_iters = max_iters
        self.d_poly_power = float(d_poly_power)
        self.discriminator = Discriminator(self.num_classes, cfg.ndf)
        self.d_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
        self.source_ce = self.make_ce("source")
        self._maps: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    # ------------------------------------------------------------------------ optimiser state
    @classmethod
    def from_config(cls, cfg, model, weighting=None):
        return cls(
            model,
            weighting,
            cfg.method.adversarial,
            cfg.model.num_classes,
            seed=cfg.train.seed,
            max_iters=cfg.train.iters,
        )

    def get_extra_state(self):
        return {"d_optimizer": self.d_optimizer.state_dict()}

    def set_extra_state(self, state) -> None:
        if state and "d_optimizer" in state:
            # deep copy: Optimizer.load_state_dict keeps same-device tensors by reference, which would
            # alias the state of the strategy the dict came from
            self.d_optimizer.load_state_dict(copy.deepcopy(state["d_optimizer"]))

    # ----------------------------------------------------------------------------------- losses
    def _d_forward_frozen(self, x: torch.Tensor) -> torch.Tensor:
        """D(x) with D's parameters excluded from the graph (gradients flow to ``x`` only)."""
        params = list(self.discriminator.parameters())
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(False)
        try:
            return self.discriminator(x)
        finally:
            for p, f in zip(params, flags):
                p.requires_grad_(f)

    def compute_losses(self, model: Segmentor, batch: dict, step: int) -> StepOutput:
        cfg = self.cfg
        src, tgt = batch["source"], batch["target"]
        xs, ys, xt = src["image"], src["label"], tgt["image"]
        out_s = model(xs)
        up_s = resize_logits(out_s.logits, ys.shape[-2:])
        src_ce, logs = self.source_ce(up_s, ys)
        losses = {"source.ce": src_ce}
        weights = {"target.adv": cfg.lambda_adv}

        out_t = model(xt)
        size_t = tuple(tgt["label"].shape[-2:]) if "label" in tgt else tuple(xt.shape[-2:])
        up_t = resize_logits(out_t.logits, size_t)
        map_t = discriminator_input(up_t, cfg.input)
        d_t = self._d_forward_frozen(map_t)
        losses["target.adv"] = gan_loss(d_t, SOURCE_LABEL, cfg.gan)
        if cfg.lambda_ent > 0:
            losses["target.ent"] = entropy_map(up_t).mean()
            weights["target.ent"] = cfg.lambda_ent

        with torch.no_grad():
            map_s = discriminator_input(up_s.detach(), cfg.input)
        self._maps = (map_s, map_t.detach())
        return StepOutput(losses=losses, weights=weights, task=("source.ce",), logs=logs)

    # -------------------------------------------------------------------------------- post-step
    def d_lr(self, step: int) -> float:
        if not self.max_iters:
            return self.cfg.lr
        return self.cfg.lr * max(0.0, 1.0 - step / self.max_iters) ** self.d_poly_power

    def after_step(self, model: Segmentor, step: int) -> dict[str, torch.Tensor]:
        """One discriminator step on this iteration's detached maps (source 0, target 1, each /2)."""
        if self._maps is None:
            return {}
        map_s, map_t = self._maps
        self._maps = None
        cfg = self.cfg
        for group in self.d_optimizer.param_groups:
            group["lr"] = self.d_lr(step)
        self.discriminator.train()
        self.d_optimizer.zero_grad(set_to_none=True)
        with torch.autocast(map_s.device.type, enabled=False):
            d_s = self.discriminator(map_s.float())
            d_t = self.discriminator(map_t.float())
            loss_s = gan_loss(d_s, SOURCE_LABEL, cfg.gan) / 2
            loss_t = gan_loss(d_t, TARGET_LABEL, cfg.gan) / 2
            (loss_s + loss_t).backward()
        from balda.core import dist

        if dist.is_distributed():  # pragma: no cover - keep the replicas of D identical
            dist.all_reduce_grads(self.discriminator.parameters())
        self.d_optimizer.step()
        thr = 0.0 if cfg.gan == "bce" else 0.5  # decision boundary: sigmoid(z) = 1/2, or z = 1/2
        return {
            "adv/d_loss": (loss_s + loss_t).detach(),
            "adv/d_loss_src": loss_s.detach(),
            "adv/d_loss_tgt": loss_t.detach(),
            "adv/d_src_acc": (d_s.detach() < thr).float().mean(),
            "adv/d_tgt_acc": (d_t.detach() >= thr).float().mean(),
        }
