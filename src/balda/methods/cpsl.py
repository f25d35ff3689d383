"""CPSL: class-balanced pixel-level self-labeling (specs/cpsl.md).

Stage 1 of Li et al., "Class-Balanced Pixel-Level Self-Labeling for Domain Adaptive Semantic
Segmentation", CVPR 2022 (CPSL). Self-training on fixed soft pseudo-labels ``p0`` of a warm-up
model (prepared offline, :mod:`balda.methods.cpsl_prepare`), *rectified* by an online clustering of
target pixels onto ``K`` learnable class prototypes; the clustering is made class-balanced by
optimal transport whose class marginal is the prior ``r`` of the pseudo-labels.

Notation: ``f`` decoder features, ``f^ = f/||f||``; ``C`` (K, D) prototypes, ``c^_k = c_k/||c_k||``;
primes denote the EMA teacher network / EMA prototypes; ``tau`` = ``cfg.tau`` (0.08).

Per step (:meth:`CPSLStrategy.compute_losses`), source batch ``(x_s, y_s)``, target batch ``x_t``:

1. ``'source.ce'`` (task group): ``CE(f(x_s), y_s)`` with the ``'source'`` class weighting.
2. Teacher on the weak (un-augmented) target view: ``f'``, logits ``o``. Rectified pseudo-label
   ``y^_i = argmax_k softmax_k(<f^'_i, c^'_k>/tau) * p0_ik`` (:func:`rectify`), at the label
   (= image) resolution: the teacher score map is upsampled bilinearly, ``p0`` of the crop is
   sampled from the stored map (:meth:`CPSLStrategy.soft_labels`). Optional confidence threshold
   on the normalised product (``cfg.threshold``, 0 = off).
3. Strong view: random affine warp ``T`` (resized crop, flip, small rotation; :func:`random_affine`)
   of ``x_t``, labels ``T(y^)`` (nearest), optional CutMix of a source box (probability
   ``cutmix_p`` per image, source labels pasted), colour jitter and blur.
   ``'target.ce'`` (trade-off ``lambda_ce``, ``'target'`` weighting) and ``'target.rce'``
   (``lambda_rce``, :func:`rce_loss`) on the student prediction of the strong view.
4. ``'target.sl'`` (``lambda_sl``; trains the prototypes only): ``n = samples_per_image`` random
   teacher feature pixels per image, ``u = f^'`` (detached). With the memory bank ``M_u`` (FIFO of
   past ``u``, re-scored with the current prototypes) ``Q_1 = Sinkhorn([M_u; u] C^^T, r)`` and, from
   the L2-normalised teacher logits ``o^`` with their bank ``M_o``, ``Q_2 = Sinkhorn([M_o; o^], r)``
   (:func:`sinkhorn_balanced`); rows of the current samples only:
   ``L_SL = -(1/n) sum_i sum_k (q1_ik + q2_ik) log softmax_k(<u_i, c^_k>/tau)`` (the two targets are
   summed, as the released code does). Then ``u``, ``o^`` enter the banks.
5. ``'target.con'`` (``lambda_con``; ProDA's prototype consistency, Zhang et al. CVPR 2021):
   ``(1/K) mean_j KL(softmax(T(<f^'_w, c^'>)/tau)_j || softmax(<f^_s, c^'>/tau)_j)`` over the
   strong-view positions ``j`` that the warp covers and CutMix did not replace; teacher scores on the
   weak view warped (bilinear) to the strong view's geometry, student scores from the strong view.
   The EMA prototypes are used on both sides (as the released code), so this term trains the network.

Total (trainer): ``L_src + lambda_ce L_ce + lambda_rce L_rce + lambda_sl L_SL + lambda_con L_con``.
After the step (:meth:`CPSLStrategy.after_step`): ``theta' <- a theta' + (1-a) theta`` with the fixed
``a = ema_alpha`` (the teacher starts equal to the warm-up student) and ``C' <- b C' + (1-b) C``,
``b = proto_ema``.

Class-balanced Sinkhorn-Knopp (SwAV, Caron et al. NeurIPS 2020, with the row marginal ``r`` instead
of the uniform ``1/K``): ``Q = exp(S^T/eps)`` (K x N), ``Q /= sum Q``; ``n_iter`` times: rows scaled
to ``r_k``, columns to ``1/N``; return ``N Q^T``. RCE is the reverse cross-entropy of symmetric
cross-entropy (Wang et al., ICCV 2019): ``RCE_i = -log(1e-4) (1 - p_{i,y_i})``.

Deviations, documented: the prototype score map is upsampled (K channels) instead of the
2048-channel features; the teacher runs in eval mode with BatchNorm statistics EMA-updated
(:func:`~balda.methods.self_training.ema_update`); the strong view uses an affine warp + colour
jitter/blur instead of RandAugment; CutMix is drawn per image; the memory banks are used as soon as
they hold samples (the released code waits until they are full).

Batch contract beyond :mod:`balda.methods.base`: ``batch['target']['index']`` addresses the stored
``p0``. If the target images are random crops / flips of the prepared (resized) images the loader
must add ``batch['target']['crop_box']`` (B,4) float ``(y0, x0, y1, x1)`` as fractions in [0, 1] of
the full resized image, and ``batch['target']['flip']`` (B,) bool (flip applied after the crop).
Without them ``p0`` is taken to cover the whole target image, unflipped.
"""
from __future__ import annotations

import copy
import logging
import math
from typing import NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from balda.balancing.class_weights import logged_weights
from balda.config import CPSLConfig
from balda.data.labels import IGNORE_INDEX
from balda.methods.augment import batch_rand, color_jitter, gaussian_blur, mix, step_generator
from balda.methods.base import StepOutput, Strategy, WeightingFactory
from balda.methods.losses import masked_mean, resize_logits, weighted_cross_entropy
from balda.models.base import Segmentor

try:  # the shared EMA helper of the mean-teacher strategy
    from balda.methods.self_training import ema_update
except ImportError:  # pragma: no cover - fallback while self_training is absent
    @torch.no_grad()
    def ema_update(teacher: nn.Module, student: nn.Module, alpha: float) -> None:
        for t, s in zip(teacher.parameters(), student.parameters()):
            t.mul_(alpha).add_(s.detach(), alpha=1.0 - alpha)
        for t, s in zip(teacher.buffers(), student.buffers()):
            if t.is_floating_point():
                t.mul_(alpha).add_(s, alpha=1.0 - alpha)
            else:
                t.copy_(s)

log = logging.getLogger("balda.cpsl")

__all__ = ["sinkhorn_balanced", "MemoryBank", "SelfLabelingHead", "rectify", "rce_loss", "random_affine",
           "crop_theta", "warp_images", "warp_labels", "warp_maps", "random_boxes", "box_masks",
           "self_labeling_loss", "prototype_consistency", "distill_losses", "DistillLosses",
           "flip_averaged_logits", "SoftLabelStore", "CPSLStrategy"]

#: -log(1e-4): the RCE constant (log of the clamped zero entries of the one-hot label).
RCE_A = -math.log(1e-4)


# -------------------------------------------------------------------------------------- Sinkhorn
@torch.no_grad()
def sinkhorn_balanced(scores: torch.Tensor, r: torch.Tensor, epsilon: float = 0.05, n_iter: int = 3) -> torch.Tensor:
    """Class-balanced Sinkhorn-Knopp assignments (CPSL; SwAV with the row marginal ``r``).

    ``scores`` (N, K) -> ``Q`` (N, K) with rows summing to 1: with ``Q = exp(S^T/eps)`` (K x N),
    ``Q /= sum Q``, then ``n_iter`` times ``Q_kj <- Q_kj r_k / sum_j Q_kj`` (rows to ``r``) and
    ``Q_kj <- Q_kj / (N sum_k Q_kj)`` (columns to ``1/N``); return ``N Q^T``. As ``n_iter`` grows the
    class marginal ``(1/N) sum_i Q_ik`` tends to ``r_k`` (``r`` is normalised to sum 1 here).
    With ``r = 1/K`` this is SwAV's Sinkhorn (Caron et al. 2020).

    Computed in float64 in the log domain (row/column scalings are log-sum-exp subtractions), so it
    is finite for any finite scores and small ``epsilon``; classes with ``r_k = 0`` get 0. No grad.
    """
    S = scores.detach().to(torch.float64)
    N, K = S.shape
    r64 = r.detach().to(device=S.device, dtype=torch.float64).reshape(K)
    r64 = r64 / r64.sum()
    logr = torch.log(r64)[:, None]  # -inf for empty classes
    pos = (r64 > 0)[:, None]
    neg_inf = torch.tensor(float("-inf"), dtype=torch.float64, device=S.device)
    L = S.t() / float(epsilon)  # (K, N) log Q
    L = L - torch.logsumexp(L.reshape(-1), dim=0)
    log_n = math.log(N)
    for _ in range(int(n_iter)):
        L = L + torch.where(pos, logr - torch.logsumexp(L, dim=1, keepdim=True), neg_inf)
        L = L - torch.logsumexp(L, dim=0, keepdim=True) - log_n
    return torch.exp(L + log_n).t().to(scores.dtype if scores.is_floating_point() else torch.float32)


# ----------------------------------------------------------------------------------- memory bank
class MemoryBank(nn.Module):
    """FIFO memory of the last ``size`` vectors of dimension ``dim`` (a ring buffer).

    :meth:`push` writes at the pointer with wrap-around (when more than ``size`` vectors are pushed
    at once only the newest ``size`` are kept); :meth:`valid` returns the filled rows (storage
    order), :meth:`ordered` them oldest first. The pointer and fill count are host integers (no
    device sync), checkpointed as the module's extra state; the storage is a buffer.
    """

    def __init__(self, size: int, dim: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        if size < 0 or dim < 1:
            raise ValueError(f"MemoryBank: size must be >= 0 and dim >= 1, got {size}, {dim}")
        self.size, self.dim = int(size), int(dim)
        self.register_buffer("data", torch.zeros(self.size, self.dim, dtype=dtype))
        self.ptr = 0
        self.count = 0

    def __len__(self) -> int:
        return self.count

    @torch.no_grad()
    def push(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, self.dim).to(self.data.dtype)
        n = x.shape[0]
        if self.size == 0 or n == 0:
            return
        if n >= self.size:
            self.data.copy_(x[n - self.size:])
            self.ptr, self.count = 0, self.size
            return
        end = self.ptr + n
        if end <= self.size:
            self.data[self.ptr:end] = x
        else:
            first = self.size - self.ptr
            self.data[self.ptr:] = x[:first]
            self.data[: n - first] = x[first:]
        self.ptr = end % self.size
        self.count = min(self.count + n, self.size)

    def valid(self) -> torch.Tensor:
        """The filled rows (storage order; all rows once full)."""
        return self.data if self.count >= self.size else self.data[: self.count]

    def ordered(self) -> torch.Tensor:
        """The filled rows, oldest first."""
        if self.count < self.size:
            return self.data[: self.count]
        return torch.cat([self.data[self.ptr:], self.data[: self.ptr]])

    def get_extra_state(self):
        return {"ptr": self.ptr, "count": self.count}

    def set_extra_state(self, state) -> None:
        self.ptr, self.count = int(state["ptr"]), int(state["count"])

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}"


# ---------------------------------------------------------------------------- self-labeling head
class SelfLabelingHead(nn.Module):
    """``K`` learnable class prototypes ``C`` (K, dim), L2-normalised on use, with an EMA copy ``C'``.

    ``prototypes`` is a trainable parameter (the trainer adds it to the optimiser);
    ``prototypes_ema`` a buffer (no grad), ``C' <- b C' + (1 - b) C`` by :meth:`update_ema`.
    """

    def __init__(self, num_classes: int, dim: int, init: Optional[torch.Tensor] = None):
        super().__init__()
        if init is None:
            init = torch.randn(num_classes, dim)
        init = torch.as_tensor(init, dtype=torch.float32)
        if tuple(init.shape) != (num_classes, dim):
            raise ValueError(f"SelfLabelingHead: init of shape {tuple(init.shape)}, expected {(num_classes, dim)}")
        init = F.normalize(init, dim=1)
        self.prototypes = nn.Parameter(init.clone())
        self.register_buffer("prototypes_ema", init.clone())

    def normalized(self, ema: bool = False) -> torch.Tensor:
        """``c^`` (K, dim); with ``ema`` the (detached) EMA prototypes ``c^'``."""
        return F.normalize(self.prototypes_ema if ema else self.prototypes, dim=1)

    def score_map(self, feats_normalized: torch.Tensor, ema: bool = False) -> torch.Tensor:
        """``<f^_j, c^_k>`` for a (B, dim, h, w) map of normalised features -> (B, K, h, w)."""
        return torch.einsum("bchw,kc->bkhw", feats_normalized, self.normalized(ema))

    @torch.no_grad()
    def update_ema(self, momentum: float) -> None:
        self.prototypes_ema.mul_(momentum).add_(self.prototypes.detach(), alpha=1.0 - momentum)


# ------------------------------------------------------------------------------ rectification/RCE
def rectify(proto_probs: torch.Tensor, p0: torch.Tensor, threshold: float = 0.0,
            ignore: int = IGNORE_INDEX) -> torch.Tensor:
    """Rectified pseudo-label ``y^ = argmax_k proto_probs_k * p0_k`` over dim 1 (CPSL Eq. 4).

    With ``threshold > 0`` pixels whose normalised product ``max_k (a_k p0_k) / sum_k a_k p0_k`` is
    below it are set to ``ignore``. Inputs (B, K, H, W) of the same size; returns (B, H, W) long.
    """
    prod = proto_probs.float() * p0.float()
    labels = prod.argmax(dim=1)
    if threshold > 0:
        conf = prod.max(dim=1).values / prod.sum(dim=1).clamp_min(1e-30)
        labels = torch.where(conf >= threshold, labels, torch.full_like(labels, ignore))
    return labels


def rce_loss(logits: torch.Tensor, labels: torch.Tensor, ignore: int = IGNORE_INDEX) -> torch.Tensor:
    """Reverse cross-entropy (symmetric CE, Wang et al. 2019): ``-log(1e-4) (1 - p_{i,y_i})``
    averaged over the non-ignored pixels; logits upsampled (bilinear) to the label size. 0 (with a
    graph) when no pixel is labelled."""
    logits = resize_logits(logits, labels.shape[-2:])
    prob = torch.softmax(logits.float(), dim=1)
    valid = labels != ignore
    y = torch.where(valid, labels, torch.zeros_like(labels)).long()
    p_y = prob.gather(1, y[:, None]).squeeze(1)
    rce = RCE_A * (1.0 - p_y) * valid
    return masked_mean(rce.sum(), valid.sum())


# ----------------------------------------------------------------------------------- geometry
def random_affine(batch: int, generator: Optional[torch.Generator], device, aspect: float = 1.0,
                  scale: tuple[float, float] = (0.75, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                  max_rotate: float = 10.0, flip_p: float = 0.5) -> torch.Tensor:
    """Random affine warps ``theta`` (B, 2, 3) mapping output to input normalised coordinates
    (``F.affine_grid`` convention, align_corners=False).

    Per image: side fraction ``s ~ U(scale)``, aspect ``a = exp(U(log ratio))``, crop size
    ``(s_x, s_y) = (min(s sqrt a, 1), min(s / sqrt a, 1))``, centre ``t ~ U(+-(1 - s))`` (crop inside
    the image), rotation ``phi ~ U(+-max_rotate)`` degrees (a rotation in *pixel* space for an image
    of width/height ``aspect``), horizontal flip ``f = -1`` with probability ``flip_p``:
    ``x_in = t + D^-1 R(phi) D diag(f s_x, s_y) x_out`` with ``D = diag(aspect, 1)``.
    """
    u = batch_rand(batch, 6, generator, device)
    s = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    a = torch.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1])
    sx = (s * a.sqrt()).clamp(max=1.0)
    sy = (s / a.sqrt()).clamp(max=1.0)
    tx = (2 * u[:, 2] - 1) * (1 - sx)
    ty = (2 * u[:, 3] - 1) * (1 - sy)
    phi = (2 * u[:, 4] - 1) * (max_rotate * math.pi / 180.0)
    f = torch.where(u[:, 5] < flip_p, -torch.ones_like(sx), torch.ones_like(sx))
    c, sn = torch.cos(phi), torch.sin(phi)
    theta = torch.stack([
        torch.stack([c * f * sx, -sn / aspect * sy, tx], dim=1),
        torch.stack([sn * aspect * f * sx, c * sy, ty], dim=1),
    ], dim=1)
    return theta


def crop_theta(boxes: Optional[torch.Tensor], flip: Optional[torch.Tensor], batch: int, device) -> torch.Tensor:
    """``theta`` (B,2,3) sampling a crop ``(y0, x0, y1, x1)`` (fractions of the full image) then an
    optional horizontal flip, from the full map; identity where ``boxes`` is None."""
    if boxes is None:
        boxes = torch.tensor([0.0, 0.0, 1.0, 1.0], device=device).expand(batch, 4)
    b = boxes.to(device=device, dtype=torch.float32)
    y0, x0, y1, x1 = b.unbind(1)
    fx = torch.ones_like(x0) if flip is None else 1.0 - 2.0 * flip.to(device=device, dtype=torch.float32)
    zero = torch.zeros_like(x0)
    return torch.stack([
        torch.stack([(x1 - x0) * fx, zero, x0 + x1 - 1], dim=1),
        torch.stack([zero, y1 - y0, y0 + y1 - 1], dim=1),
    ], dim=1)


def _grid(theta: torch.Tensor, size, dtype) -> torch.Tensor:
    B = theta.shape[0]
    return F.affine_grid(theta.to(dtype), [B, 1, int(size[0]), int(size[1])], align_corners=False)


def warp_images(images: torch.Tensor, theta: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """``out(x) = images(theta x)`` by ``grid_sample`` (zero padding: the mean colour for normalised
    images)."""
    grid = _grid(theta, images.shape[-2:], images.dtype)
    return F.grid_sample(images, grid, mode=mode, padding_mode="zeros", align_corners=False)


def warp_labels(labels: torch.Tensor, theta: torch.Tensor, ignore: int = IGNORE_INDEX,
                size: Optional[tuple[int, int]] = None) -> torch.Tensor:
    """Warp (B,H,W) integer labels with the same geometry as :func:`warp_images` (nearest sampling;
    positions sampled outside the input get ``ignore``). ``size`` = output (h, w), default (H, W)."""
    size = tuple(labels.shape[-2:]) if size is None else size
    grid = _grid(theta, size, torch.float32)
    both = torch.stack([labels.float(), torch.ones_like(labels, dtype=torch.float32)], dim=1)
    out = F.grid_sample(both, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    lab = out[:, 0].round().long()
    return torch.where(out[:, 1] > 0.5, lab, torch.full_like(lab, ignore))


def warp_maps(maps: torch.Tensor, theta: torch.Tensor, size: Optional[tuple[int, int]] = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp (B,C,h,w) continuous maps (bilinear, border padding) with the geometry of
    :func:`warp_images`; returns the warped maps and a (B, h', w') bool mask of the positions whose
    sampling point lies inside the input."""
    size = tuple(maps.shape[-2:]) if size is None else size
    grid = _grid(theta, size, maps.dtype)
    out = F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=False)
    valid = (grid.abs() <= 1.0).all(dim=-1)
    return out, valid


def random_boxes(batch: int, generator: Optional[torch.Generator], device, p: float) -> torch.Tensor:
    """CutMix boxes (Yun et al. 2019) as fractions ``(y0, x0, y1, x1)`` (B,4): ``lam ~ U(0,1)``,
    side fraction ``sqrt(1 - lam)``, uniform centre, clipped to the image; an image is mixed with
    probability ``p`` (otherwise its box is empty)."""
    u = batch_rand(batch, 4, generator, device)
    side = torch.sqrt(1.0 - u[:, 0])
    cy, cx = u[:, 1], u[:, 2]
    use = (u[:, 3] < p).float()
    half = side / 2 * use
    return torch.stack([(cy - half).clamp(0, 1), (cx - half).clamp(0, 1), (cy + half).clamp(0, 1),
                        (cx + half).clamp(0, 1)], dim=1)


def box_masks(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) bool: pixel centres ``((y+0.5)/h, (x+0.5)/w)`` inside ``[y0, y1) x [x0, x1)``."""
    h, w = int(size[0]), int(size[1])
    yc = (torch.arange(h, device=boxes.device, dtype=torch.float32) + 0.5) / h
    xc = (torch.arange(w, device=boxes.device, dtype=torch.float32) + 0.5) / w
    y0, x0, y1, x1 = (v[:, None, None] for v in boxes.float().unbind(1))
    return (yc[None, :, None] >= y0) & (yc[None, :, None] < y1) & (xc[None, None, :] >= x0) & (xc[None, None, :] < x1)


# ---------------------------------------------------------------------------------- SL / consistency
def self_labeling_loss(u: torch.Tensor, o: torch.Tensor, head: SelfLabelingHead, prior: torch.Tensor, tau: float,
                       epsilon: float, n_iter: int, bank_u: Optional[MemoryBank] = None,
                       bank_o: Optional[MemoryBank] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """CPSL self-labeling loss of the current samples (module docstring, step 4).

    ``u`` (n, D) normalised teacher features, ``o`` (n, K) normalised teacher logits (both treated
    as constants). ``Q_1 = Sinkhorn([M_u; u] C^^T)``, ``Q_2 = Sinkhorn([M_o; o])`` (rows of the
    current samples), ``L = -(1/n) sum_i sum_k (Q1 + Q2)_ik log softmax_k(<u_i, c^_k>/tau)``; the
    gradient reaches only the prototypes. The banks are *not* updated here. Returns ``(L, marginal)``
    with ``marginal = mean_i Q1_i`` (K,) the class marginal of the current assignments.
    """
    u = u.detach().float()
    o = o.detach().float()
    n = u.shape[0]
    c_hat = head.normalized()
    logp = torch.log_softmax(u @ c_hat.t() / tau, dim=1)
    with torch.no_grad():
        cd = c_hat.detach()
        s1 = u @ cd.t()
        if bank_u is not None and len(bank_u):
            s1 = torch.cat([bank_u.valid().float() @ cd.t(), s1])
        s2 = o
        if bank_o is not None and len(bank_o):
            s2 = torch.cat([bank_o.valid().float(), s2])
        q1 = sinkhorn_balanced(s1, prior, epsilon, n_iter)[-n:]
        q2 = sinkhorn_balanced(s2, prior, epsilon, n_iter)[-n:]
    loss = -((q1 + q2) * logp).sum(dim=1).mean()
    return loss, q1.mean(dim=0)


def prototype_consistency(teacher_scores: torch.Tensor, student_scores: torch.Tensor,
                          valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``(1/K) mean_{j valid} sum_k t_jk (log t_jk - log s_jk)`` with ``t = softmax(teacher_scores)``
    (constant) and ``s = softmax(student_scores)`` over dim 1 (ProDA/CPSL consistency; both inputs
    already divided by the temperature). 0 (with a graph) when no position is valid."""
    t_log = torch.log_softmax(teacher_scores.detach().float(), dim=1)
    s_log = torch.log_softmax(student_scores.float(), dim=1)
    kl = (t_log.exp() * (t_log - s_log)).sum(dim=1)
    K = teacher_scores.shape[1]
    if valid is None:
        return kl.mean() / K
    v = valid.to(kl.dtype)
    return masked_mean((kl * v).sum(), v.sum()) / K


# ------------------------------------------------------------------------------------ distillation
class DistillLosses(NamedTuple):
    ce: torch.Tensor  # CE on the confident teacher argmax
    kl: torch.Tensor  # KL(teacher || student)

    @property
    def total(self) -> torch.Tensor:
        return self.ce + self.kl


def distill_losses(student_logits: torch.Tensor, teacher_logits_flip_avg: torch.Tensor, threshold: float = 0.95,
                   ignore: int = IGNORE_INDEX) -> DistillLosses:
    """Self-distillation losses of CPSL stages 2-3.

    ``t = softmax(teacher logits)`` (flip-averaged, see :func:`flip_averaged_logits`; constant),
    ``s = softmax(student logits)`` (upsampled bilinearly to the teacher's size).
    ``ce = (1/|V|) sum_{i in V} -log s_{i, argmax t_i}`` with ``V = {i : max_k t_ik >= threshold}``;
    ``kl = mean_i sum_k t_ik (log t_ik - log s_ik)`` computed with ``log_softmax`` on both sides
    (the released code passes probabilities where ``F.kl_div`` expects log-probabilities).
    """
    t_log = torch.log_softmax(teacher_logits_flip_avg.detach().float(), dim=1)
    s_logits = resize_logits(student_logits.float(), t_log.shape[-2:])
    conf, lab = t_log.max(dim=1)
    labels = torch.where(conf.exp() >= threshold, lab, torch.full_like(lab, ignore))
    ce = weighted_cross_entropy(s_logits, labels, ignore_index=ignore)
    s_log = torch.log_softmax(s_logits, dim=1)
    kl = (t_log.exp() * (t_log - s_log)).sum(dim=1).mean()
    return DistillLosses(ce, kl)


@torch.no_grad()
def flip_averaged_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``log((softmax(g(x)) + flip(softmax(g(flip(x))))) / 2)``: valid logits of the flip-averaged
    prediction of ``model`` (its softmax is the averaged probability)."""
    p = torch.softmax(model(images).logits.float(), dim=1)
    pf = torch.softmax(model(images.flip(-1)).logits.float(), dim=1).flip(-1)
    return torch.log(((p + pf) / 2).clamp_min(1e-30))


# ---------------------------------------------------------------------------------- soft labels
class SoftLabelStore(nn.Module):
    """The stored soft pseudo-labels ``p0`` (N, K, h, w) float16, looked up by dataset index.

    ``on_device=True``: a non-persistent buffer (moves with the strategy; lookup without host sync).
    ``on_device=False``: kept in host memory; a lookup copies the (B,) indices to the host.
    """

    def __init__(self, p0, on_device: bool = True):
        super().__init__()
        t = torch.as_tensor(p0)
        if t.dim() != 4:
            raise ValueError(f"SoftLabelStore: expected (N, K, h, w) soft labels, got shape {tuple(t.shape)}")
        t = t.to(torch.float16)
        self.on_device = bool(on_device)
        if self.on_device:
            self.register_buffer("p0", t, persistent=False)
            self._host = None
        else:
            self.p0 = None
            self._host = t

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple((self.p0 if self.on_device else self._host).shape)

    def lookup(self, index: torch.Tensor) -> torch.Tensor:
        """(B, K, h, w) float32 soft labels of the items ``index`` on ``index.device``."""
        if self.on_device:
            return self.p0.index_select(0, index.to(self.p0.device).long()).float()
        sel = self._host.index_select(0, index.detach().to("cpu").long())
        return sel.to(index.device, non_blocking=True).float()


# ----------------------------------------------------------------------------------- strategy
def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def _ce_term(logits, labels, weighting):
    up = resize_logits(logits, labels.shape[-2:])
    w = weighting(up.detach(), labels) if weighting is not None else None
    return weighted_cross_entropy(up, labels, class_weights=w), w


def _validate(cfg: CPSLConfig) -> None:
    checks = [("tau", cfg.tau > 0), ("epsilon", cfg.epsilon > 0), ("sinkhorn_iters", cfg.sinkhorn_iters >= 1),
              ("bank_size", cfg.bank_size >= 0), ("samples_per_image", cfg.samples_per_image >= 1),
              ("ema_alpha", 0 <= cfg.ema_alpha < 1), ("proto_ema", 0 <= cfg.proto_ema < 1),
              ("threshold", 0 <= cfg.threshold <= 1), ("cutmix_p", 0 <= cfg.cutmix_p <= 1),
              ("pseudo_stride", cfg.pseudo_stride >= 1)]
    bad = [k for k, ok in checks if not ok]
    if bad:
        raise ValueError("method.cpsl: invalid value(s) " + ", ".join(f"{k}={getattr(cfg, k)!r}" for k in bad))


class CPSLStrategy(Strategy):
    """CPSL stage 1 (see module docstring).

    ``CPSLStrategy(model, weighting, cfg, num_classes, mean, std, seed=0, prepared=None,
    init_from_prepared=True, p0_on_device=None)``

    * ``cfg.prepared``: the folder of ``balda cpsl prepare`` (read with
      :func:`~balda.methods.cpsl_prepare.load_prepared` unless ``prepared``, its result, is given);
      a missing or invalid folder raises ``ValueError`` naming ``method.cpsl.prepared``.
    * ``init_from_prepared``: if the folder holds the warm-up weights (``model.pt``), they are loaded
      into ``model`` here (before the teacher copy), so stage 1 starts from the warm-up model.
    * ``p0_on_device``: keep ``p0`` on the training device (default when it is <= 4 GiB).
    * Submodules: ``teacher`` (EMA network, no grad, eval mode), ``head`` (prototypes: the only
      trainable parameters of the strategy; EMA copy as a buffer), ``bank_feat``/``bank_out``
      (memory banks), ``store`` (p0, not checkpointed), weighting modules.
    """

    #: Strong-view photometric augmentation (DACS values): jitter strength, probability; blur prob.
    jitter_strength: float = 0.2
    jitter_p: float = 0.8
    blur_p: float = 0.5

    def __init__(self, model: Segmentor, weighting: Optional[WeightingFactory], cfg: CPSLConfig, num_classes: int,
                 mean, std, seed: int = 0, prepared: Optional[dict] = None, init_from_prepared: bool = True,
                 p0_on_device: Optional[bool] = None, **extras):
        super().__init__(model, weighting)
        _validate(cfg)
        self.cfg = cfg
        self.num_classes = K = int(num_classes)
        self.seed = int(seed)
        if prepared is None:
            prepared = self._load(cfg)
        net = _unwrap(model)
        self._check_prepared(prepared, K, int(getattr(net, "feature_channels", prepared["prototypes"].shape[1])),
                             cfg)
        mw = prepared.get("model_weights")
        if init_from_prepared and mw is not None:
            from balda.core.checkpoint import load_checkpoint, load_model_weights

            state = load_checkpoint(mw)["model"]
            try:
                load_model_weights(net, state, mw)
            except Exception as e:  # noqa: BLE001
                raise ValueError(f"method.cpsl.prepared: the warm-up weights {mw} do not fit the model: {e}") from None
            log.info("CPSL: student initialised from the warm-up weights %s", mw)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1).clone(),
                             persistent=False)
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1).clone(),
                             persistent=False)
        self.teacher = copy.deepcopy(net)
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        protos = torch.as_tensor(np.asarray(prepared["prototypes"], dtype=np.float32))
        D = protos.shape[1]
        self.head = SelfLabelingHead(K, D, init=protos)
        self.bank_feat = MemoryBank(cfg.bank_size, D)
        self.bank_out = MemoryBank(cfg.bank_size, K)
        self.register_buffer("prior", torch.as_tensor(np.asarray(prepared["prior"], dtype=np.float64)).float(),
                             persistent=False)
        p0 = prepared["p0"]
        if p0_on_device is None:
            p0_on_device = int(np.prod(p0.shape)) * 2 <= (4 << 30)
        self.store = SoftLabelStore(p0, on_device=p0_on_device)
        self.source_weighting = self.make_weighting("source")
        self.target_weighting = self.make_weighting("target")

    # ------------------------------------------------------------------------------- preparation
    @staticmethod
    def _load(cfg: CPSLConfig) -> dict:
        from balda.methods.cpsl_prepare import PreparedError, load_prepared

        if not cfg.prepared:
            raise ValueError("method.cpsl.prepared is not set: CPSL needs the folder of soft pseudo-labels, class "
                             "prior and prototypes written by `balda cpsl prepare RUN_OR_CKPT` with the warm-up "
                             "model; set method.cpsl.prepared=<that folder>")
        try:
            return load_prepared(cfg.prepared)
        except PreparedError as e:
            raise ValueError(f"method.cpsl.prepared={cfg.prepared!r} is not usable: {e}") from None

    @staticmethod
    def _check_prepared(prepared: dict, K: int, D: int, cfg: CPSLConfig) -> None:
        where = f"method.cpsl.prepared={prepared.get('dir', cfg.prepared)!s}"
        p0, protos, prior = prepared.get("p0"), prepared.get("prototypes"), prepared.get("prior")
        if p0 is None or protos is None or prior is None:
            raise ValueError(f"{where}: the prepared data lacks p0, prototypes or prior")
        if int(prepared.get("num_classes", K)) != K or p0.shape[1] != K or np.asarray(prior).shape != (K,):
            raise ValueError(f"{where}: prepared for {p0.shape[1]} classes, the model has {K}")
        if protos.shape != (K, D):
            raise ValueError(f"{where}: prototypes of shape {tuple(protos.shape)}, the model's decoder features "
                             f"have {D} channels (expected ({K}, {D})); was it prepared with another model?")
        if int(prepared.get("pseudo_stride", cfg.pseudo_stride)) != cfg.pseudo_stride:
            log.warning("%s: stored at stride %s, method.cpsl.pseudo_stride=%s (the stored maps are used)", where,
                        prepared.get("pseudo_stride"), cfg.pseudo_stride)

    # ------------------------------------------------------------------------------------- modes
    def train(self, mode: bool = True):  # noqa: D401 - nn.Module API
        super().train(mode)
        self.teacher.eval()
        return self

    def eval_model(self, model: Segmentor) -> nn.Module:
        """The student (as the released code evaluates); the EMA model is :attr:`teacher`."""
        return model

    # ------------------------------------------------------------------------------------ pieces
    def soft_labels(self, index: torch.Tensor, size: tuple[int, int], crop_box: Optional[torch.Tensor] = None,
                    flip: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``p0`` of the batch items at ``size`` (B, K, H, W): the stored map of item ``index[b]``
        sampled bilinearly (align_corners=False, border padding) over its crop, flipped if ``flip``."""
        p = self.store.lookup(index)
        theta = crop_theta(crop_box, flip, p.shape[0], p.device)
        grid = _grid(theta, size, p.dtype)
        return F.grid_sample(p, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _sample(self, feats_n: torch.Tensor, logits: torch.Tensor, g: torch.Generator):
        """``n`` random positions per image (without replacement): normalised features (B*n, D)
        and L2-normalised logits (B*n, K)."""
        B, D, h, w = feats_n.shape
        K = logits.shape[1]
        n = min(int(self.cfg.samples_per_image), h * w)
        keys = batch_rand(B, h * w, g, feats_n.device)
        sel = keys.topk(n, dim=1).indices  # (B, n)
        u = feats_n.flatten(2).gather(2, sel[:, None].expand(B, D, n)).transpose(1, 2).reshape(-1, D)
        o = logits.flatten(2).gather(2, sel[:, None].expand(B, K, n)).transpose(1, 2).reshape(-1, K)
        return u, F.normalize(o, dim=1)

    # ---------------------------------------------------------------------------------- losses
    def compute_losses(self, model: Segmentor, batch: dict, step: int) -> StepOutput:
        cfg = self.cfg
        src, tgt = batch["source"], batch["target"]
        xs, ys, xt, idx = src["image"], src["label"], tgt["image"], tgt["index"]
        B, _, H, W = xt.shape
        if cfg.cutmix_p > 0 and (xs.shape[-2:] != xt.shape[-2:] or ys.shape[-2:] != xs.shape[-2:]):
            raise ValueError("CPSL CutMix pastes source pixels into the target crop: source image "
                             f"{tuple(xs.shape[-2:])}, source label {tuple(ys.shape[-2:])} and target image "
                             f"{tuple(xt.shape[-2:])} must have the same size (or set method.cpsl.cutmix_p=0)")
        dev = xt.device
        tau = float(cfg.tau)
        losses: dict[str, torch.Tensor] = {}
        logs: dict[str, torch.Tensor] = {}
        weights = {"target.ce": cfg.lambda_ce, "target.rce": cfg.lambda_rce, "target.sl": cfg.lambda_sl,
                   "target.con": cfg.lambda_con}

        # 1. source CE
        out_s = model(xs)
        losses["source.ce"], w_src = _ce_term(out_s.logits, ys, self.source_weighting)
        if w_src is not None:
            logs["weights/source"] = logged_weights(w_src, ys)

        g = step_generator(self.seed, step, dev)
        def no_amp():
            return torch.autocast(dev.type, enabled=False)

        # 2. teacher on the weak view, rectified pseudo-labels
        with torch.no_grad():
            t_out = self.teacher(xt)
            with no_amp():
                f_t = F.normalize(t_out.features.float(), dim=1)
                o_t = t_out.logits.float()
                s_teacher = self.head.score_map(f_t, ema=True) / tau  # (B,K,h,w)
                proto_prob = torch.softmax(resize_logits(s_teacher, (H, W)), dim=1)
                p0 = self.soft_labels(idx, (H, W), tgt.get("crop_box"), tgt.get("flip"))
                y_hat = rectify(proto_prob, p0, cfg.threshold)
                valid_hat = y_hat != IGNORE_INDEX
                changed = ((y_hat != p0.argmax(dim=1)) & valid_hat).float().sum() / valid_hat.float().sum().clamp_min(1)

            # 3. strong view: warp, CutMix, photometric
            theta = random_affine(B, g, dev, aspect=W / H)
            x_strong = warp_images(xt, theta)
            y_strong = warp_labels(y_hat, theta)
            boxes = None
            if cfg.cutmix_p > 0:
                boxes = random_boxes(B, g, dev, cfg.cutmix_p)
                Bs = xs.shape[0]
                pair = torch.arange(B, device=dev) % Bs
                xs_p, ys_p = (xs, ys) if Bs == B else (xs.index_select(0, pair), ys.index_select(0, pair))
                m_img = box_masks(boxes, (H, W))
                x_strong = mix(m_img, xs_p, x_strong)
                y_strong = torch.where(m_img, ys_p.long(), y_strong)
                logs["cpsl/cutmix_ratio"] = m_img.float().mean()
            x_strong = color_jitter(x_strong, self.jitter_strength, self.jitter_p, g, self.mean, self.std)
            x_strong = gaussian_blur(x_strong, g, p=self.blur_p)

        # student on the strong view: pseudo-label CE + RCE
        out_t = model(x_strong)
        losses["target.ce"], w_tgt = _ce_term(out_t.logits, y_strong, self.target_weighting)
        if w_tgt is not None:
            logs["weights/target"] = logged_weights(w_tgt, y_strong)
        losses["target.rce"] = rce_loss(out_t.logits, y_strong)

        with no_amp():
            # 4. self-labeling (prototypes only)
            u, o = self._sample(f_t, o_t, g)
            losses["target.sl"], marginal = self_labeling_loss(u, o, self.head, self.prior, tau, cfg.epsilon,
                                                               cfg.sinkhorn_iters, self.bank_feat, self.bank_out)
            self.bank_feat.push(u)
            self.bank_out.push(o)

            # 5. prototype consistency (teacher weak -> strong geometry vs student strong)
            f_s = F.normalize(out_t.features.float(), dim=1)
            s_student = self.head.score_map(f_s, ema=True) / tau
            s_warp, valid = warp_maps(s_teacher, theta, size=tuple(s_student.shape[-2:]))
            if boxes is not None:
                valid = valid & ~box_masks(boxes, tuple(s_student.shape[-2:]))
            losses["target.con"] = prototype_consistency(s_warp, s_student, valid)

        logs["cpsl/assign_marginal"] = marginal.detach()
        logs["cpsl/prior"] = self.prior
        logs["cpsl/rectified_changed"] = changed
        logs["cpsl/pseudo_valid"] = valid_hat.float().mean()
        logs["cpsl/con_valid"] = valid.float().mean()
        return StepOutput(losses=losses, weights=weights, task=("source.ce",), logs=logs)

    # -------------------------------------------------------------------------------- post-step
    def after_step(self, model: Segmentor, step: int) -> dict[str, torch.Tensor]:
        """EMA of the network (fixed momentum ``ema_alpha``) and of the prototypes (``proto_ema``)."""
        ema_update(self.teacher, _unwrap(model), float(self.cfg.ema_alpha))
        self.head.update_ema(float(self.cfg.proto_ema))
        return {}
