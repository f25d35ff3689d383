r"""Class weights for the pixel-wise cross-entropy terms: GBW and prior-based baselines.

Gradient-based class weighting (GBW)
------------------------------------
Alcover-Couso, Escudero-Vinolo, SanMiguel, Bescos, "Gradient-based Class Weighting for Unsupervised
Domain Adaptation in Dense Prediction Visual Tasks", 2024 (docs/gbw.md). Weights are re-estimated
at every loss evaluation from the gradients of per-class losses, with the quadratic program of
LOW (Santiago, Barata, Sasdelli, Carneiro, Nascimento, "LOW: Training deep neural networks by
learning optimal sample weights", Pattern Recognition 2021) applied per class.

Notation: pixels ``i`` of the batch at label resolution, labels ``y_i`` in ``{0..K-1}`` or ignored,
``p_i = softmax(z_i)``, one-hot ``Y``, ``n_c`` the number of labelled pixels of class ``c`` and
``s_i = 1 / (n_{y_i} + 1)`` for labelled pixels, ``0`` for ignored ones.

1. Per-class mean loss ``L_c = -(1/(n_c+1)) sum_{i: y_i=c} log p_{i,c}``.
2. Gradient of ``sum_c L_c`` w.r.t. the logits: ``G_{i,c} = s_i (p_{i,c} - Y_{i,c})``.
3. ``g_c = ||G_{:,c}||_2`` (:func:`gbw_statistic`).
4. ``w = argmin lam ||w||^2 - sum_c (g_c^2 + lam) w_c  s.t.  w >= 0, sum_c w_c = K``
   (:func:`gbw_weights`).

Solution of the QP. Completing the square, the objective equals
``lam ||w - (g^2 + lam) / (2 lam)||^2 + const``, so ``w`` is the Euclidean projection of
``g^2/(2 lam) + 1/2`` onto ``{w >= 0, sum w = K}``. The projection is invariant to adding a constant to
every coordinate, hence ``w = proj(g^2 / (2 lam))`` as docs/gbw.md states. KKT: with a multiplier ``mu``
for the equality and ``nu_c >= 0`` for the bounds, ``2 lam w_c - (g_c^2 + lam) + mu - nu_c = 0``, i.e.
``w_c = max(0, (g_c^2 + lam - mu) / (2 lam))``. If no weight is clipped, summing over ``c`` gives
``mu = mean_k g_k^2 - lam``, i.e. ``w_c = 1 + (g_c^2 - mean_k g_k^2) / (2 lam)``.

``faithful`` mode uses ``lam`` as given (the released code: ``lam = 1``). At real batch sizes
``g_c^2`` is ~1e-6..1e-3, so the weights stay within ~1e-3 of 1 (docs/gbw.md, "known pitfall").
``scale_free`` mode uses ``lam_eff = lam * mean_c g_c^2`` (equivalently ``g^2`` normalised by its mean),
so the weights move by O(1/lam) whatever the batch size.

Baselines
---------
:func:`inverse_frequency_weights` (``w_c ∝ 1/f_c``) and :func:`class_balanced_weights` (effective
number of samples, Cui, Jia, Lin, Song, Belongie, "Class-Balanced Loss Based on Effective Number of
Samples", CVPR 2019), both fixed from source pixel counts and served by :class:`FixedClassWeights`.

:func:`build_weighting` turns a :class:`~balda.config.BalancingConfig` into the
:data:`~balda.methods.base.WeightingFactory` that strategies call once per loss term.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from balda.config import BalancingConfig, ConfigError
from balda.core import dist

__all__ = [
    "GBW",
    "FixedClassWeights",
    "LOSS_TERMS",
    "build_weighting",
    "class_balanced_weights",
    "gbw_statistic",
    "gbw_weights",
    "inverse_frequency_weights",
    "project_simplex",
]

#: Loss terms a class weighting can be attached to (``BalancingConfig.apply_to``).
LOSS_TERMS = ("source", "target", "active")

_IGNORE_INDEX = 255  # balda.data.labels.IGNORE_INDEX; not imported to keep this module light.

CountsLike = Union[torch.Tensor, Sequence[float]]


# ------------------------------------------------------------------------------------- statistic
@torch.no_grad()
def gbw_statistic(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = _IGNORE_INDEX) -> torch.Tensor:
    r"""Per-class gradient norm ``g_c = ||G_{:,c}||_2`` of GBW, in closed form (no autograd).

    ``G_{i,c} = s_i (p_{i,c} - Y_{i,c})`` is the gradient of ``sum_c L_c`` with
    ``L_c = -(1/(n_c+1)) sum_{i: y_i=c} log p_{i,c}`` w.r.t. the logits, ``s_i = 1/(n_{y_i}+1)`` for
    labelled pixels and 0 for ignored ones (Alcover-Couso et al. 2024, docs/gbw.md steps 1-3).

    Computation, a few elementwise passes over one float buffer, no one-hot, no autograd:
    ``p = exp(log_softmax(z))`` (float32 for half inputs, float64 kept), the label entry zeroed by a
    scatter, ``1 - p_{i,y_i} = sum_{c != y_i} p_{i,c}`` as a channel sum, rows scaled by ``s_i`` in
    place, and the label entry set to ``-s_i (1 - p_{i,y_i})``; the buffer then *is* ``G`` and ``g``
    is its L2 norm over pixels. Every summand of ``||G_{:,c}||^2`` is a square of an accurately
    computed number, so unlike the expansion ``sum s^2 p^2 - 2 sum_{y=c} s^2 p + sum_{y=c} s^2`` (or
    ``1 - p`` from a rounded ``p``) there is no cancellation when ``p_{i,y_i}`` is close to 1, where
    ``g_c`` is tiny and those forms are rounding noise in float32.

    Args:
        logits: ``(B, K, H, W)`` raw scores, expected at label resolution (bilinearly resized to it,
            ``align_corners=False``, if not). Detached; any float dtype.
        labels: ``(B, H, W)`` integer labels. ``ignore_index`` and any value outside ``[0, K)`` are
            ignored (``s_i = 0``).

    Returns:
        ``g``: ``(K,)`` on the logits' device, float32 (float64 for float64 logits). Absent classes
        get only the ``p_{i,c}`` terms of other pixels; with every pixel ignored ``g = 0``.

    Data parallelism: inside a sharded training step (:func:`balda.core.dist.sharded_step`) the
    statistic is that of the *global* batch: the class counts ``n_c`` are all-reduced before
    ``s_i`` is formed and the per-class sums of squares ``||G_{:,c}||^2`` are all-reduced before the
    square root (two small all-reduces of ``K`` numbers), so every rank gets the one-process ``g``.
    """
    if logits.dim() != 4:
        raise ValueError(f"logits must be (B, K, H, W), got shape {tuple(logits.shape)}")
    if labels.dim() != 3 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels must be (B, H, W) with B={logits.shape[0]}, got {tuple(labels.shape)}")
    K = logits.shape[1]
    z = logits.detach()
    dtype = torch.float64 if z.dtype == torch.float64 else torch.float32
    if tuple(z.shape[-2:]) != tuple(labels.shape[-2:]):
        z = F.interpolate(z.to(dtype), size=tuple(labels.shape[-2:]), mode="bilinear", align_corners=False)

    lab = labels.to(device=z.device, dtype=torch.long)
    valid = (lab != ignore_index) & (lab >= 0) & (lab < K)
    lab = torch.where(valid, lab, torch.zeros_like(lab))

    # n_c by scatter-add (torch.bincount would sync on CUDA to size its output).
    n = torch.zeros(K, dtype=torch.long, device=z.device)
    n.scatter_add_(0, lab.reshape(-1), valid.reshape(-1).to(torch.long))
    sharded = dist.in_sharded_step()
    if sharded:
        n = dist.all_reduce_sum(n)
    s = valid.to(dtype) / (n.to(dtype)[lab] + 1.0)  # (B, H, W), 0 where ignored
    s = s.unsqueeze(1)
    idx = lab.unsqueeze(1)  # (B, 1, H, W)

    G = F.log_softmax(z, dim=1, dtype=dtype).exp_()  # p, a fresh buffer reused in place below
    G.scatter_(1, idx, torch.zeros_like(s))  # p with the label entry zeroed ...
    rest = G.sum(dim=1, keepdim=True)  # ... sums to 1 - p_{i,y_i}, accurate even when p_{i,y_i} ~ 1
    G.mul_(s)  # s_i p_ic off the label
    G.scatter_(1, idx, rest.mul_(s).neg_())  # s_i (p_{i,y_i} - 1) at the label
    if sharded:
        return dist.all_reduce_sum(G.square().sum(dim=(0, 2, 3))).sqrt()
    return torch.linalg.vector_norm(G, ord=2, dim=(0, 2, 3))


# ------------------------------------------------------------------------------------ projection
def logged_weights(weights: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The class weights as logged: ``w_c`` for the classes present in ``labels``, NaN for the others.

    A weight multiplies no pixel of a class absent from the batch, so averaging it into a curve
    would only say how often the class is absent (rare classes would look down-weighted). The
    logger averages over the steps where a class is present (NaN-aware) and TensorBoard skips the
    NaN points. Presence is a scatter into a (K+1,) mask on the device: no host sync.
    """
    K = weights.numel()
    lab = labels.reshape(-1).long()
    lab = torch.where((lab >= 0) & (lab < K), lab, torch.full_like(lab, K))
    present = torch.zeros(K + 1, dtype=torch.bool, device=weights.device).scatter_(0, lab, True)[:K]
    w = weights.detach().float()
    return torch.where(present, w, torch.full_like(w, float("nan")))


def project_simplex(v: torch.Tensor, total: float = 1.0) -> torch.Tensor:
    r"""Euclidean projection of ``v`` onto ``{w >= 0, sum_c w_c = total}`` along the last dim.

    ``w = argmin ||w - v||^2`` is ``w_c = max(v_c - theta, 0)`` with ``theta`` such that the weights
    sum to ``total``; sort-based, O(K log K) (Held, Wolfe, Crowder 1974; Duchi et al. 2008):
    ``u`` = ``v`` sorted decreasingly, ``rho = max{j : u_j + (total - sum_{r<=j} u_r)/j > 0}``,
    ``theta = (sum_{r<=rho} u_r - total)/rho``. ``v`` is centred first (the projection is invariant to a
    common shift), so when nothing is clipped ``w = v - mean(v) + total/K`` keeps the small deviations
    of ``v`` exact in float32. Pure tensor ops on ``v``'s device, no host sync; batched over leading
    dims.

    Args:
        v: ``(..., K)`` floating tensor.
        total: the sum of the result (``>= 0``).
    """
    if isinstance(total, (int, float)) and not total >= 0:
        raise ValueError(f"total must be >= 0, got {total}")
    if not v.is_floating_point():
        v = v.to(torch.get_default_dtype())
    K = v.shape[-1]
    d = v - v.mean(dim=-1, keepdim=True)
    u = torch.sort(d, dim=-1, descending=True).values
    cs = u.cumsum(dim=-1)
    j = torch.arange(1, K + 1, device=v.device)
    cond = u + (total - cs) / j.to(v.dtype) > 0
    rho = torch.where(cond, j, torch.zeros_like(j)).amax(dim=-1, keepdim=True).clamp_min(1)
    tau = (total - cs.gather(-1, rho - 1)) / rho.to(v.dtype)
    return (d + tau).clamp_min(0)


def gbw_weights(g: torch.Tensor, lam: float = 1.0, mode: str = "faithful") -> torch.Tensor:
    r"""GBW class weights: the exact optimum of the LOW quadratic program (Santiago et al. 2021).

    ``w = argmin_w lam_eff ||w||^2 - sum_c (g_c^2 + lam_eff) w_c  s.t.  w >= 0, sum_c w_c = K``
    ``  = project_simplex(g^2 / (2 lam_eff), K)``; unclipped: ``w_c = 1 + (g_c^2 - mean g^2)/(2 lam_eff)``.

    ``mode="faithful"``: ``lam_eff = lam`` (as released, ``lam = 1``). ``mode="scale_free"``:
    ``lam_eff = lam * mean_c g_c^2``; computed as ``ĝ^2 / (2 lam mean ĝ^2)`` with ``ĝ = g / max g``
    (no underflow); an all-zero ``g`` gives uniform weights. Batched over leading dims of ``g``.
    """
    if isinstance(lam, (int, float)) and not lam > 0:
        raise ValueError(f"GBW lambda must be > 0, got {lam}")
    K = g.shape[-1]
    if not g.is_floating_point():
        g = g.to(torch.get_default_dtype())
    if mode == "faithful":
        v = g.square() / (2 * lam)
    elif mode == "scale_free":
        tiny = torch.finfo(g.dtype).tiny
        gn = g / g.abs().amax(dim=-1, keepdim=True).clamp_min(tiny)
        gn2 = gn.square()
        v = gn2 / ((2 * lam) * gn2.mean(dim=-1, keepdim=True).clamp_min(tiny))
    else:
        raise ValueError(f"GBW mode must be 'faithful' or 'scale_free', got {mode!r}")
    return project_simplex(v, float(K))


# ---------------------------------------------------------------------------------------- modules
class GBW(nn.Module):
    r"""Gradient-based class weights, recomputed at every call (docs/gbw.md).

    ``forward(logits, labels)`` computes ``w_batch = gbw_weights(gbw_statistic(logits, labels), lam,
    mode)`` and returns detached ``(K,)`` float32 weights on the logits' device, to be passed as
    ``class_weights`` to :func:`balda.methods.losses.weighted_cross_entropy`. With ``ema > 0`` the
    weights are smoothed across calls: ``w <- ema * w + (1 - ema) * w_batch`` (buffer ``weights``,
    initialised to ones, no bias correction); ``ema = 0`` is the released per-batch behaviour.
    ``last`` holds the latest returned weights and ``last_g`` (not saved) the latest statistic, for
    logging. If the batch weights are not finite (NaN/inf logits), the previous ``weights`` are used
    instead so that the EMA state is never poisoned. No host sync.

    Args:
        num_classes: ``K``.
        mode: ``"faithful"`` or ``"scale_free"`` (see :func:`gbw_weights`).
        lam: QP regulariser (absolute, or relative to ``mean g^2`` in ``scale_free`` mode).
        ema: momentum in ``[0, 1)``.
        ignore_index: label value of ignored pixels.
    """

    def __init__(
        self,
        num_classes: int,
        mode: str = "faithful",
        lam: float = 1.0,
        ema: float = 0.0,
        ignore_index: int = _IGNORE_INDEX,
    ):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if mode not in ("faithful", "scale_free"):
            raise ValueError(f"GBW mode must be 'faithful' or 'scale_free', got {mode!r}")
        if not lam > 0:
            raise ValueError(f"GBW lambda must be > 0, got {lam}")
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"GBW ema must be in [0, 1), got {ema}")
        self.num_classes = int(num_classes)
        self.mode = mode
        self.lam = float(lam)
        self.ema = float(ema)
        self.ignore_index = int(ignore_index)
        self.register_buffer("weights", torch.ones(num_classes))
        self.register_buffer("last", torch.ones(num_classes))
        self.register_buffer("last_g", torch.zeros(num_classes), persistent=False)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, mode={self.mode!r}, lam={self.lam}, ema={self.ema}"

    def _follow(self, device: torch.device) -> None:
        if self.weights.device != device:
            self.weights = self.weights.to(device)
            self.last = self.last.to(device)
            self.last_g = self.last_g.to(device)

    @torch.no_grad()
    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 4 or logits.shape[1] != self.num_classes:
            raise ValueError(f"GBW expects logits (B, {self.num_classes}, H, W), got {tuple(logits.shape)}")
        self._follow(logits.device)
        g = gbw_statistic(logits, labels, self.ignore_index)
        w_batch = gbw_weights(g, self.lam, self.mode).to(self.weights.dtype)
        w_batch = torch.where(torch.isfinite(w_batch).all(), w_batch, self.weights)
        w = self.weights * self.ema + w_batch * (1.0 - self.ema) if self.ema > 0 else w_batch
        self.weights.copy_(w)
        self.last.copy_(w)
        self.last_g.copy_(g)
        return w


class FixedClassWeights(nn.Module):
    """Constant class weights (buffer ``weights``); ``forward(logits=None, labels=None)`` returns them
    on the logits' device. Same call signature as :class:`GBW`."""

    def __init__(self, weights: CountsLike):
        super().__init__()
        w = torch.as_tensor(weights, dtype=torch.float32).detach().clone().reshape(-1)
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
            raise ValueError("class weights must be finite and >= 0")
        self.register_buffer("weights", w)

    @property
    def last(self) -> torch.Tensor:
        """The weights (for logging, like :attr:`GBW.last`)."""
        return self.weights

    def extra_repr(self) -> str:
        return f"num_classes={self.weights.numel()}"

    def forward(self, logits: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        if logits is not None and logits.device != self.weights.device:
            return self.weights.to(logits.device)
        return self.weights


# ------------------------------------------------------------------------------- prior baselines
def _counts(counts: CountsLike) -> torch.Tensor:
    c = torch.as_tensor(counts, dtype=torch.float64).detach().cpu().reshape(-1)
    if c.numel() == 0 or not bool(torch.isfinite(c).all()) or bool((c < 0).any()):
        raise ValueError("class counts must be a non-empty vector of finite values >= 0")
    if not bool((c > 0).any()):
        raise ValueError("class counts are all zero: no class is present")
    return c


def inverse_frequency_weights(counts: CountsLike) -> torch.Tensor:
    r"""Inverse-frequency weights ``w_c = (1/f_c) / mean_{k present}(1/f_k)``, ``f_c = n_c / sum n``.

    The weights have mean 1 over the present classes (``n_c > 0``). Absent classes get the largest
    present weight (that of the rarest observed class), not 0: the same weights may serve the
    target / active terms, where such a class can occur and must not be dropped from training.
    Returns float32 ``(K,)`` on the CPU.
    """
    c = _counts(counts)
    present = c > 0
    w = torch.zeros_like(c)
    w[present] = c[present].sum() / c[present]
    w[present] = w[present] / w[present].mean()
    w[~present] = w[present].max()
    return w.float()


def class_balanced_weights(counts: CountsLike, beta: float = 0.9999) -> torch.Tensor:
    r"""Effective-number weights (Cui et al., CVPR 2019): ``w_c ∝ (1 - beta) / (1 - beta^{n_c})``.

    ``1 - beta^{n}`` is evaluated as ``-expm1(n log beta)`` in float64 (accurate for ``beta -> 1`` and
    huge pixel counts). ``beta = 0`` gives uniform weights, ``beta -> 1`` inverse frequency. Absent
    classes get the largest present weight (see :func:`inverse_frequency_weights`); the weights are
    then normalised to sum to ``K``. Returns float32 ``(K,)`` on the CPU.
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"class-balanced beta must be in [0, 1), got {beta}")
    c = _counts(counts)
    present = c > 0
    w = torch.zeros_like(c)
    log_beta = torch.log(torch.tensor(beta, dtype=torch.float64))
    w[present] = (1.0 - beta) / -torch.expm1(c[present] * log_beta)
    w[~present] = w[present].max()
    w = w * (c.numel() / w.sum())
    return w.float()


# --------------------------------------------------------------------------------------- factory
def build_weighting(cfg: BalancingConfig, num_classes: int, class_counts: Optional[CountsLike] = None):
    """The :data:`~balda.methods.base.WeightingFactory` for ``cfg``.

    The returned callable maps a loss term (``"source"``, ``"target"``, ``"active"``) to a *fresh*
    module (each term keeps its own GBW state), or ``None`` when ``cfg.class_weights == "none"`` or the
    term is not in ``cfg.apply_to``. ``inverse_freq`` / ``class_balanced`` need ``class_counts`` (source
    pixel counts per class, length ``num_classes``); they are computed once here.

    Raises:
        ConfigError: missing/mis-sized counts (naming ``balancing.class_weights``), unknown terms in
            ``balancing.apply_to``, invalid ``balancing.gbw.*`` or ``balancing.cb_beta``.
    """
    kind = cfg.class_weights
    unknown = [t for t in cfg.apply_to if t not in LOSS_TERMS]
    if unknown:
        raise ConfigError(f"'balancing.apply_to': unknown loss term(s) {unknown}; valid: {list(LOSS_TERMS)}")
    apply_to = frozenset(cfg.apply_to)

    def check_term(term: str) -> bool:
        if term not in LOSS_TERMS:
            raise ValueError(f"unknown loss term {term!r}; valid: {list(LOSS_TERMS)}")
        return term in apply_to

    if kind == "none":

        def none_factory(term: str) -> Optional[nn.Module]:
            check_term(term)
            return None

        return none_factory

    if kind == "gbw":
        g = cfg.gbw
        if not g.lam > 0:
            raise ConfigError(f"'balancing.gbw.lam' must be > 0, got {g.lam}")
        if not 0.0 <= g.ema < 1.0:
            raise ConfigError(f"'balancing.gbw.ema' must be in [0, 1), got {g.ema}")

        def gbw_factory(term: str) -> Optional[nn.Module]:
            return GBW(num_classes, mode=g.mode, lam=g.lam, ema=g.ema) if check_term(term) else None

        return gbw_factory

    if kind in ("inverse_freq", "class_balanced"):
        if class_counts is None:
            raise ConfigError(
                f"'balancing.class_weights': {kind!r} needs the source pixel counts per class "
                "(class_counts), none were given"
            )
        counts = torch.as_tensor(class_counts, dtype=torch.float64).reshape(-1)
        if counts.numel() != num_classes:
            raise ConfigError(
                f"'balancing.class_weights': {kind!r} got {counts.numel()} class counts for {num_classes} classes"
            )
        try:
            if kind == "inverse_freq":
                w = inverse_frequency_weights(counts)
            else:
                if not 0.0 <= cfg.cb_beta < 1.0:
                    raise ConfigError(f"'balancing.cb_beta' must be in [0, 1), got {cfg.cb_beta}")
                w = class_balanced_weights(counts, cfg.cb_beta)
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError(f"'balancing.class_weights': {kind!r}: {e}") from None

        def fixed_factory(term: str) -> Optional[nn.Module]:
            return FixedClassWeights(w) if check_term(term) else None

        return fixed_factory

    raise ConfigError(f"'balancing.class_weights': unknown value {kind!r}")  # pragma: no cover
