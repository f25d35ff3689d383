"""Loss combiners: turn a strategy's named losses into gradients in ``p.grad``.

The trainer zeroes the gradients, calls :meth:`Combiner.backward` and steps the optimiser (after
unscaling, with a ``GradScaler``). Two combiners exist:

* :class:`SumCombiner` -- one backward of the base loss ``sum_n weights[n] * losses[n]``.
* :class:`HarmonizingCombiner` -- gradient harmonization between the *task* group ``C`` (the
  terms named in ``StepOutput.task``) and the *alignment* group ``A`` (every other term): GH and
  GH++ (Huang, Song, Zhang, "Gradient Harmonization in Unsupervised Domain Adaptation",
  IEEE TPAMI 2024), the exact GH++ rotation (``gh++exact``) and PCGrad (Yu et al., NeurIPS 2020).
  Equations in :mod:`balda.balancing.gh` and docs/gh.md.

Groups and trade-offs
---------------------
With ``lambda_G = max_{n in G} |weights[n]|`` the group loss is
``L_G = sum_{n in G} (weights[n] / lambda_G) losses[n]`` (the unweighted loss for a single-term
group), so the base loss is ``lambda_A L_A + lambda_C L_C``. Terms with weight 0 or without a
graph contribute nothing and are dropped. As in the released code, the harmonization weights are
computed from the gradients ``g_A``, ``g_C`` of the *unweighted* group losses over the ``shared``
parameters and the trade-off is applied afterwards.

The integral operator
---------------------
The harmonized weights multiply the whole group loss: the applied update is the gradient of

    w_A lambda_A L_A + w_C lambda_C L_C      (w_A, w_C detached)

with respect to *all* optimised parameters -- the shared ones, where the conflict is measured,
and the others too (CPSL prototypes, or the encoder when only the decoder is harmonized). A
non-shared parameter therefore receives ``w_C lambda_C g_C + w_A lambda_A g_A``, not the plain
sum. This keeps "harmonized training = one weighted loss" exact for every parameter.

Parameters outside ``params`` (a discriminator whose output feeds the alignment loss) are never
touched: every differentiation names its inputs explicitly.

Cost
----
``shared_mode='all'``: two ``torch.autograd.grad`` calls over ``params`` (the first retains the
graph); the statistics ``d, ||g_A||^2, ||g_C||^2`` over ``shared`` are accumulated in float64 on
the device and ``p.grad = w_C lambda_C g_C + w_A lambda_A g_A`` is assembled directly (no third
backward, unlike the released code). ``shared_mode='decoder'``: the two gradient probes only
reach the decode-head parameters (autograd only runs the head's part of the graph), then one
backward of the weighted loss fills every parameter's gradient. No ``.item()``: weights, cosine
and logs stay device tensors.

Data parallelism (DDP)
----------------------
DDP averages gradients through hooks on ``AccumulateGrad``; ``torch.autograd.grad`` never runs
them, and the conflict must be measured between the *global* group gradients anyway (the cosine
of averaged gradients is not the average of per-rank cosines). So, inside a sharded training step
(:func:`balda.core.dist.sharded_step`), :class:`HarmonizingCombiner` does its own reduction
(``reduces_grads = True``) and the trainer runs the step under DDP's ``no_sync()``:

* ``shared_mode='all'``: ``g_A`` and ``g_C`` are averaged over ranks (coalesced all-reduces,
  twice DDP's traffic) right after the two ``autograd.grad`` calls; ``d``, the norms, the
  weights and the assembled update are then identical on every rank and equal to one process.
* ``shared_mode='decoder'``: the head probes ``h_A``, ``h_C`` are averaged before the statistics;
  after the weighted backward every ``p.grad`` is averaged.
* the plain-sum fallback (an empty group) averages every ``p.grad`` after its backward.

Per-rank losses are normalised over the global batch (:func:`balda.core.dist.global_mean`), so
the average of the per-rank gradients is the one-process gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor

from balda.balancing.gh import (
    VARIANTS,
    accumulation_dtype,
    angle_degrees,
    cosine,
    grad_stats,
    harmonized_weights,
)
from balda.core import dist
from balda.core.types import StepOutput

__all__ = ["Combiner", "SumCombiner", "HarmonizingCombiner", "build_combiner", "shared_parameters"]


def _trainable(params: Sequence[Tensor]) -> list[Tensor]:
    return [p for p in params if p.requires_grad]


def _scaled(loss: Tensor, scaler) -> Tensor:
    return scaler.scale(loss) if scaler is not None else loss


def _accumulate(p: Tensor, g: Tensor) -> None:
    """Add ``g`` to ``p.grad`` the way autograd does (assign when None)."""
    if p.grad is None:
        p.grad = g
    else:
        p.grad.add_(g)


def shared_parameters(model: torch.nn.Module, mode: str = "all") -> list[Tensor]:
    """The parameters over which the conflict is measured: all of the segmentor's, or its head's."""
    if mode == "decoder":
        if not hasattr(model, "decode_head"):
            raise ValueError("shared_mode='decoder' needs a model with a 'decode_head'")
        return _trainable(list(model.decode_head.parameters()))
    if mode != "all":
        raise ValueError(f"shared mode must be 'all' or 'decoder', got {mode!r}")
    return _trainable(list(model.parameters()))


class Combiner:
    """Base class: ``backward`` leaves the final update's gradient in ``p.grad`` for ``params``.

    ``params`` are all tensors the optimiser steps; ``shared`` the subset over which gradient
    conflict is measured. With a ``torch.amp.GradScaler`` the losses are scaled before
    differentiation; unscaling is the trainer's job. Returns detached device-tensor logs.
    """

    shared_mode: str = "all"
    #: True when :meth:`backward` averages the gradients over ranks itself (the trainer then runs
    #: the step under DDP's ``no_sync()`` and reduces nothing more).
    reduces_grads: bool = False

    def backward(
        self, out: StepOutput, params: Sequence[Tensor], shared: Sequence[Tensor], scaler=None
    ) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


class SumCombiner(Combiner):
    """The base update: one backward of ``out.total()`` into ``params``."""

    def backward(self, out, params, shared=(), scaler=None):
        params = _trainable(params)
        total = out.total()
        if not params or not isinstance(total, Tensor) or not total.requires_grad:
            return {}
        torch.autograd.backward(_scaled(total, scaler), inputs=params)
        return {}


def _group(out: StepOutput, names: list[str]) -> tuple[float, Optional[Tensor]]:
    """``(lambda_G, L_G)`` of the terms ``names`` (``(0, None)`` when nothing is differentiable)."""
    terms = []
    for n in names:
        w = float(out.weight(n))
        v = out.losses[n]
        if w != 0.0 and isinstance(v, Tensor) and v.requires_grad:
            terms.append((w, v))
    if not terms:
        return 0.0, None
    lam = max(abs(w) for w, _ in terms)
    loss = terms[0][1] if terms[0][0] == lam and len(terms) == 1 else sum((w / lam) * v for w, v in terms)
    return lam, loss


class HarmonizingCombiner(Combiner):
    """Gradient harmonization between the task group and the alignment group.

    Args:
        variant: ``gh`` (obtuse -> acute, = PCGrad for equal trade-offs), ``gh++`` (released
            scalar weights, obtuse -> orthogonal), ``gh++exact`` (exact rotation coefficients),
            ``pcgrad`` (PCGrad on the trade-off-weighted group gradients).
        harmonic_range: ``k`` of GH++ (``beta = k beta_max``), in [0, 1].
        shared_mode: ``all`` (assemble the update from two full gradient passes) or ``decoder``
            (probe only the decode head's gradients, then one weighted backward). Recorded here for
            :func:`shared_parameters`; the ``shared`` list passed to :meth:`backward` decides what
            the conflict is measured over.
        first: the group GH++ / gh++exact up-weights (the first argument of their formulas).

    If either group is empty (e.g. source-only, or the alignment weight is 0) the update is the
    plain sum (:class:`SumCombiner`) and no ``gh/*`` logs are returned.

    Under DDP (inside a sharded step) the gradients are averaged over ranks here (module docstring,
    "Data parallelism"); ``reduces_grads = True``.
    """

    reduces_grads = True

    def __init__(
        self, variant: str = "gh", harmonic_range: float = 0.5, shared_mode: str = "all", first: str = "alignment"
    ):
        if variant not in VARIANTS:
            raise ValueError(f"unknown harmonization variant {variant!r}; choose one of {VARIANTS}")
        if shared_mode not in ("all", "decoder"):
            raise ValueError(f"shared_mode must be 'all' or 'decoder', got {shared_mode!r}")
        if first not in ("alignment", "task"):
            raise ValueError(f"first must be 'alignment' or 'task', got {first!r}")
        if not 0.0 <= harmonic_range <= 1.0:
            raise ValueError(f"harmonic_range must lie in [0, 1], got {harmonic_range}")
        self.variant = variant
        self.k = float(harmonic_range)
        self.shared_mode = shared_mode
        self.first = first
        self._sum = SumCombiner()

    def __repr__(self) -> str:
        return (
            f"HarmonizingCombiner(variant={self.variant!r}, harmonic_range={self.k}, "
            f"shared_mode={self.shared_mode!r}, first={self.first!r})"
        )

    # ------------------------------------------------------------------------------------------
    def backward(self, out, params, shared, scaler=None):
        params = _trainable(params)
        task_names = [n for n in out.losses if n in out.task]
        align_names = [n for n in out.losses if n not in out.task]
        lam_c, loss_c = _group(out, task_names)
        lam_a, loss_a = _group(out, align_names)
        sharded = dist.in_sharded_step()
        if loss_c is None or loss_a is None or not params:
            logs = self._sum.backward(out, params, shared, scaler)
            if sharded:
                dist.all_reduce_grads(params)
            return logs

        index = {id(p): i for i, p in enumerate(params)}
        shared = _trainable(shared)
        missing = [tuple(p.shape) for p in shared if id(p) not in index]
        if missing:
            raise ValueError(
                f"shared parameters must be a subset of params; {len(missing)} are not (shapes {missing[:3]})"
            )
        device = loss_c.device
        acc = accumulation_dtype(device)
        # With a GradScaler both group losses are multiplied by the same scale s before
        # differentiation, so g_A, g_C -> s g_A, s g_C and d, ||g_A||^2, ||g_C||^2 all scale by s^2:
        # every weight (ratios d/||g||^2, the cosine, the norm ratio ||g_A||/||g_C||) is invariant.
        # The assembled gradient is s times the true update; the trainer unscales it.
        s_a, s_c = _scaled(loss_a, scaler), _scaled(loss_c, scaler)

        if self.shared_mode == "all":
            g_a = torch.autograd.grad(s_a, params, retain_graph=True, allow_unused=True)
            g_c = torch.autograd.grad(s_c, params, allow_unused=True)
            if sharded:  # global group gradients (DDP's hooks do not see autograd.grad)
                g_a = dist.all_reduce_mean_(g_a)
                g_c = dist.all_reduce_mean_(g_c)
            sel = [index[id(p)] for p in shared]
            d, n_a2, n_c2 = grad_stats([g_a[i] for i in sel], [g_c[i] for i in sel], device, acc)
            w_a, w_c = self._weights(d, n_a2, n_c2, lam_a, lam_c)
            self._assemble(params, g_a, g_c, w_a * lam_a, w_c * lam_c)
        else:
            if shared:
                h_a = torch.autograd.grad(s_a, shared, retain_graph=True, allow_unused=True)
                h_c = torch.autograd.grad(s_c, shared, retain_graph=True, allow_unused=True)
                if sharded:
                    h_a = dist.all_reduce_mean_(h_a)
                    h_c = dist.all_reduce_mean_(h_c)
                d, n_a2, n_c2 = grad_stats(h_a, h_c, device, acc)
            else:
                d = n_a2 = n_c2 = torch.zeros((), dtype=acc, device=device)
            w_a, w_c = self._weights(d, n_a2, n_c2, lam_a, lam_c)
            total = (w_a * lam_a).to(loss_a.dtype) * loss_a + (w_c * lam_c).to(loss_c.dtype) * loss_c
            torch.autograd.backward(_scaled(total, scaler), inputs=params)
            if sharded:
                dist.all_reduce_grads(params)
        return self._logs(d, n_a2, n_c2, w_a, w_c, scaler)

    def _weights(self, d, n_a2, n_c2, lam_a, lam_c):
        return harmonized_weights(self.variant, d, n_a2, n_c2, lam_a, lam_c, self.k, self.first)

    @staticmethod
    def _assemble(params, g_a, g_c, coef_a: Tensor, coef_c: Tensor) -> None:
        """``p.grad += coef_c g_C + coef_a g_A`` for every parameter (``None`` grads are zeros)."""
        both = [i for i in range(len(params)) if g_a[i] is not None and g_c[i] is not None]
        if both:
            # 0-dim coefficients do not promote the (float32) gradients; foreach keeps launches low.
            new = torch._foreach_mul([g_c[i] for i in both], coef_c)
            torch._foreach_add_(new, torch._foreach_mul([g_a[i] for i in both], coef_a))
            for i, g in zip(both, new):
                _accumulate(params[i], g)
        for i, p in enumerate(params):
            ga, gc = g_a[i], g_c[i]
            if (ga is None) == (gc is None):
                continue  # handled above, or unused by both losses (grad left as autograd would)
            _accumulate(p, gc * coef_c if ga is None else ga * coef_a)

    @staticmethod
    def _logs(d, n_a2, n_c2, w_a, w_c, scaler) -> dict[str, Tensor]:
        cos = cosine(d, n_a2, n_c2)
        dot = d
        if scaler is not None:  # report d of the unscaled losses (s is a device tensor: no sync)
            s = scaler.scale(torch.ones((), dtype=d.dtype, device=d.device))
            dot = d / (s * s)
        return {
            "gh/cos": cos.detach(),
            "gh/angle": angle_degrees(cos).detach(),
            "gh/conflict": (d < 0).to(d.dtype),
            "gh/w_task": w_c.detach(),
            "gh/w_align": w_a.detach(),
            "gh/dot": dot.detach(),
        }


def build_combiner(cfg) -> Combiner:
    """The combiner of a :class:`~balda.config.BalancingConfig` (or a full ``Config``)."""
    cfg = getattr(cfg, "balancing", cfg)
    if cfg.combiner == "sum":
        return SumCombiner()
    gh = cfg.gh
    return HarmonizingCombiner(cfg.combiner, harmonic_range=gh.harmonic_range, shared_mode=gh.params, first=gh.first)
