"""Gradient harmonization (GH, GH++) and PCGrad as pure functions on gradients.

References
----------
* Huang, Song, Zhang, "Gradient Harmonization in Unsupervised Domain Adaptation", IEEE TPAMI
  2024 -- GH and GH++ (cited below as *Huang et al.*).
* Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020 -- PCGrad.

Notation (docs/gh.md). ``g_a`` is the gradient of the alignment loss ``L_a`` and ``g_c`` the
gradient of the task loss ``L_c`` over the shared parameters, flattened into vectors of one
layout. ``d = <g_a, g_c>``, ``phi = arccos(d / (||g_a|| ||g_c||))`` in degrees. When ``d >= 0``
nothing is harmonized and every weight is 1.

GH (obtuse -> acute)::

    g~_a = g_a - d/||g_c||^2 g_c,   g~_c = g_c - d/||g_a||^2 g_a
    g~_a + g~_c = w_a g_a + w_c g_c,   w_a = 1 - d/||g_a||^2,   w_c = 1 - d/||g_c||^2

so the harmonized update is the gradient of ``w_a L_a + w_c L_c`` with detached weights (the
"integral operator"). For two tasks this is PCGrad's summed update.

GH++ (obtuse -> orthogonal), the released scalar weights::

    beta_max = phi - 90,  beta = k beta_max,
    w_1 = 1 + 2 sin(beta/2),   w_2 = 1 + 2 sin((beta - beta_max)/2)

GH++ exact rotation (``gh++exact``): rotate ``g_1`` by ``beta`` and ``g_2`` by
``gamma = beta_max - beta`` towards each other in their common plane, keeping their norms; the
sum of the rotated vectors is ``c_1 g_1 + c_2 g_2`` with::

    c_1 = [sin(phi - beta) + (||g_2||/||g_1||) sin(gamma)] / sin(phi)
    c_2 = [sin(phi - gamma) + (||g_1||/||g_2||) sin(beta)] / sin(phi)

and the rotated vectors are orthogonal (their angle is ``phi - beta - gamma = 90``).

Every function works on tensors and stays on the tensors' device: branches are ``torch.where``,
never a Python ``if`` on a tensor value, so the training hot path has no host synchronisation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor

__all__ = [
    "accumulation_dtype",
    "grad_stats",
    "cosine",
    "angle_degrees",
    "gh_weights",
    "ghpp_weights",
    "ghpp_exact_coeffs",
    "gh_project",
    "pcgrad",
    "harmonized_weights",
    "VARIANTS",
]

#: Harmonization variants understood by :func:`harmonized_weights`.
VARIANTS = ("gh", "gh++", "gh++exact", "pcgrad")

_TINY = 1e-300  # denominators are clamped to this (float64); the branch using them is masked out


def _t(x, like: Optional[Tensor] = None) -> Tensor:
    if isinstance(x, Tensor):
        return x
    if like is not None:
        return torch.as_tensor(x, dtype=like.dtype, device=like.device)
    return torch.as_tensor(x, dtype=torch.float64)


def _tiny(x: Tensor) -> float:
    return torch.finfo(x.dtype).tiny if x.is_floating_point() else _TINY


def accumulation_dtype(device: torch.device | str) -> torch.dtype:
    """float64 where the device supports it (MPS does not: float32 there)."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def grad_stats(
    grads_a: Sequence[Optional[Tensor]],
    grads_c: Sequence[Optional[Tensor]],
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(d, ||g_a||^2, ||g_c||^2)`` of two gradients given as aligned per-parameter lists.

    A ``None`` entry is a zero gradient (the parameter is unused by that loss). The sums are
    accumulated in ``dtype`` (default float64, see :func:`accumulation_dtype`) on the gradients'
    device and returned as 0-dim device tensors (no host sync).
    """
    if len(grads_a) != len(grads_c):
        raise ValueError(f"gradient lists differ in length: {len(grads_a)} vs {len(grads_c)}")
    if device is None:
        first = next((g for g in list(grads_a) + list(grads_c) if g is not None), None)
        device = first.device if first is not None else torch.device("cpu")
    dtype = dtype or accumulation_dtype(device)
    dots, na, nc = [], [], []
    for ga, gc in zip(grads_a, grads_c):
        a = ga.reshape(-1).to(dtype) if ga is not None else None
        c = gc.reshape(-1).to(dtype) if gc is not None else None
        if a is not None:
            na.append(torch.dot(a, a))
        if c is not None:
            nc.append(torch.dot(c, c))
        if a is not None and c is not None:
            dots.append(torch.dot(a, c))

    def total(xs):
        return torch.stack(xs).sum() if xs else torch.zeros((), dtype=dtype, device=device)

    return total(dots), total(na), total(nc)


def cosine(d: Tensor, n_a2: Tensor, n_c2: Tensor) -> Tensor:
    """``cos(phi) = d / (||g_a|| ||g_c||)``, clamped to [-1, 1]; 0 when either gradient is zero."""
    d = _t(d)
    n_a2, n_c2 = _t(n_a2, d), _t(n_c2, d)
    # sqrt separately: the product of squared norms can overflow float32 under a large loss scale.
    den = n_a2.clamp_min(0).sqrt() * n_c2.clamp_min(0).sqrt()
    cos = d / den.clamp_min(_tiny(den))
    return torch.where(den > 0, cos, torch.zeros_like(cos)).clamp(-1.0, 1.0)


def angle_degrees(cos: Tensor) -> Tensor:
    """``phi = arccos(cos)`` in degrees."""
    return torch.rad2deg(torch.acos(_t(cos).clamp(-1.0, 1.0)))


def gh_weights(d: Tensor, n_a2: Tensor, n_c2: Tensor) -> tuple[Tensor, Tensor]:
    """GH loss weights (Huang et al., TPAMI 2024, obtuse -> acute).

    ``w_a = 1 - d/||g_a||^2`` and ``w_c = 1 - d/||g_c||^2`` when ``d < 0`` (both > 1), else
    ``w_a = w_c = 1``. ``n_a2``, ``n_c2`` are the *squared* norms. ``w_a g_a + w_c g_c`` equals
    ``g~_a + g~_c`` of :func:`gh_project` (PCGrad's summed update for two tasks).
    """
    d = _t(d)
    n_a2, n_c2 = _t(n_a2, d), _t(n_c2, d)
    conflict = d < 0  # d < 0 implies both norms > 0; the clamps only keep the masked branch finite
    one = torch.ones_like(d)
    w_a = torch.where(conflict, 1 - d / n_a2.clamp_min(_tiny(n_a2)), one)
    w_c = torch.where(conflict, 1 - d / n_c2.clamp_min(_tiny(n_c2)), one)
    return w_a, w_c


def _angles(cos: Tensor, k: float, max_angle: Optional[float] = None):
    """``(phi, beta_max, beta)`` in radians for ``phi = arccos(cos)`` (optionally capped)."""
    phi = torch.acos(cos.clamp(-1.0, 1.0))
    if max_angle is not None:
        phi = phi.clamp(max=math.radians(max_angle))
    beta_max = phi - math.pi / 2
    return phi, beta_max, k * beta_max


def ghpp_weights(cos: Tensor, k: float = 0.5) -> tuple[Tensor, Tensor]:
    """GH++ loss weights as released (Huang et al., TPAMI 2024, obtuse -> orthogonal).

    With ``phi = arccos(cos)``, ``beta_max = phi - 90 deg``, ``beta = k beta_max``::

        w_1 = 1 + 2 sin(beta / 2),   w_2 = 1 + 2 sin((beta - beta_max) / 2)

    when ``cos < 0``; ``(1, 1)`` otherwise. Only the angle matters. The *first* gradient is
    up-weighted (``w_1 >= 1 >= w_2`` for ``k`` in [0, 1]); at ``k = 0.5`` ``w_1 + w_2 = 2`` and
    ``w_1 in [1, 1 + 2 sin 22.5 deg]``. These scalar weights do not make the applied gradients
    exactly orthogonal (see :func:`ghpp_exact_coeffs`).
    """
    cos = _t(cos)
    _, beta_max, beta = _angles(cos, k)
    one = torch.ones_like(cos)
    conflict = cos < 0
    w_1 = torch.where(conflict, 1 + 2 * torch.sin(beta / 2), one)
    w_2 = torch.where(conflict, 1 + 2 * torch.sin((beta - beta_max) / 2), one)
    return w_1, w_2


def ghpp_exact_coeffs(
    cos: Tensor, n_1: Tensor, n_2: Tensor, k: float = 0.5, max_angle: float = 179.0
) -> tuple[Tensor, Tensor]:
    """Loss coefficients of the exact GH++ rotation (docs/gh.md, ``gh++exact``).

    ``n_1``, ``n_2`` are the norms ``||g_1||``, ``||g_2||`` (not squared). With ``phi``,
    ``beta_max = phi - 90``, ``beta = k beta_max``, ``gamma = beta_max - beta``::

        c_1 = [sin(phi - beta) + (n_2/n_1) sin(gamma)] / sin(phi)
        c_2 = [sin(phi - gamma) + (n_1/n_2) sin(beta)] / sin(phi)

    ``c_1 g_1 + c_2 g_2 = R_beta g_1 + R_gamma g_2``, the sum of ``g_1`` rotated by ``beta`` and
    ``g_2`` rotated by ``gamma`` towards each other in their common plane (norms kept); the two
    rotated vectors are orthogonal. Identity ``(1, 1)`` when ``cos >= 0``.

    Near ``phi = 180`` the common plane degenerates and ``1/sin(phi)`` diverges (the update on the
    shared parameters stays bounded, but the loss coefficients -- which also scale the gradients of
    non-shared parameters -- do not). ``phi`` is therefore capped at ``max_angle`` degrees in the
    formulas: for ``phi <= max_angle`` the result is exact; beyond it the coefficients are those of
    ``max_angle`` (continuous in ``phi``, finite even at ``phi = 180``, bounded by about
    ``(1 + n_2/n_1) / sin(180 - max_angle)``), and orthogonality is only approximate.
    """
    if not 90.0 < max_angle < 180.0:
        raise ValueError(f"max_angle must lie in (90, 180), got {max_angle}")
    cos = _t(cos)
    n_1, n_2 = _t(n_1, cos), _t(n_2, cos)
    phi, beta_max, beta = _angles(cos, k, max_angle)
    gamma = beta_max - beta
    sin_phi = torch.sin(phi)  # >= sin(180 - max_angle) > 0 where cos < 0
    conflict = cos < 0  # implies n_1, n_2 > 0
    tiny = _tiny(cos)
    r = n_2 / n_1.clamp_min(tiny)
    r_inv = n_1 / n_2.clamp_min(tiny)
    den = sin_phi.clamp_min(tiny)
    c_1 = (torch.sin(phi - beta) + r * torch.sin(gamma)) / den
    c_2 = (torch.sin(phi - gamma) + r_inv * torch.sin(beta)) / den
    one = torch.ones_like(cos)
    return torch.where(conflict, c_1, one), torch.where(conflict, c_2, one)


def gh_project(g_a: Tensor, g_c: Tensor) -> tuple[Tensor, Tensor]:
    """The GH harmonized gradients ``(g~_a, g~_c)`` of two flat vectors (identity if ``d >= 0``).

    ``g~_a = g_a - d/||g_c||^2 g_c`` is orthogonal to ``g_c`` and ``g~_c = g_c - d/||g_a||^2 g_a``
    to ``g_a``.
    """
    d = torch.dot(g_a, g_c)
    conflict = d < 0
    p_a = g_a - d / torch.dot(g_c, g_c).clamp_min(_tiny(d)) * g_c
    p_c = g_c - d / torch.dot(g_a, g_a).clamp_min(_tiny(d)) * g_a
    return torch.where(conflict, p_a, g_a), torch.where(conflict, p_c, g_c)


def pcgrad(g_a: Tensor, g_c: Tensor) -> Tensor:
    """Reference PCGrad (Yu et al., NeurIPS 2020) for two tasks: the summed projected update.

    Written as the published algorithm -- for each task gradient ``g_i`` (a copy), for each other
    task ``j`` with ``<g_i, g_j> < 0``, ``g_i <- g_i - <g_i, g_j>/||g_j||^2 g_j`` (projection on the
    normal plane of the *original* ``g_j``); the update is the sum. Not used in training (the
    combiners use the equivalent loss weights); tests compare against it.
    """
    grads = [g_a, g_c]
    out = []
    for i, g_i in enumerate(grads):
        g = g_i.clone()
        for j, g_j in enumerate(grads):
            if j == i:
                continue
            dot = torch.dot(g, g_j)
            g = torch.where(dot < 0, g - dot / torch.dot(g_j, g_j).clamp_min(_tiny(dot)) * g_j, g)
        out.append(g)
    return out[0] + out[1]


def harmonized_weights(
    variant: str,
    d: Tensor,
    n_a2: Tensor,
    n_c2: Tensor,
    lambda_a: float = 1.0,
    lambda_c: float = 1.0,
    k: float = 0.5,
    first: str = "alignment",
) -> tuple[Tensor, Tensor]:
    """Weights ``(w_a, w_c)`` of the alignment and task group losses for a variant.

    ``d``, ``n_a2``, ``n_c2`` are the statistics of the *unweighted* group gradients ``g_a``,
    ``g_c``; ``lambda_a``, ``lambda_c`` the trade-offs applied afterwards: the update is
    ``w_a lambda_a g_a + w_c lambda_c g_c``.

    * ``gh``: :func:`gh_weights` of the unweighted gradients (as released).
    * ``gh++``: :func:`ghpp_weights`, ``first`` ('alignment' or 'task') is the up-weighted group.
    * ``gh++exact``: :func:`ghpp_exact_coeffs` with the same order convention.
    * ``pcgrad``: PCGrad on the trade-off-weighted gradients ``lambda_a g_a``, ``lambda_c g_c``
      (the published algorithm applied to the base loss's terms); equals ``gh`` when
      ``lambda_a == lambda_c``.
    """
    if variant == "gh":
        return gh_weights(d, n_a2, n_c2)
    if variant == "pcgrad":
        return gh_weights(d * (lambda_a * lambda_c), n_a2 * lambda_a**2, n_c2 * lambda_c**2)
    if first not in ("alignment", "task"):
        raise ValueError(f"first must be 'alignment' or 'task', got {first!r}")
    cos = cosine(d, n_a2, n_c2)
    if variant == "gh++":
        w_1, w_2 = ghpp_weights(cos, k)
    elif variant == "gh++exact":
        n_a, n_c = _t(n_a2, cos).clamp_min(0).sqrt(), _t(n_c2, cos).clamp_min(0).sqrt()
        n_1, n_2 = (n_a, n_c) if first == "alignment" else (n_c, n_a)
        w_1, w_2 = ghpp_exact_coeffs(cos, n_1, n_2, k)
    else:
        raise ValueError(f"unknown harmonization variant {variant!r}; choose one of {VARIANTS}")
    return (w_1, w_2) if first == "alignment" else (w_2, w_1)
