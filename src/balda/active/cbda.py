r"""CBDA: class-balanced and dynamic acquisition on top of RIPU scores.

Schachtsiek, Rossi, Hannagan, "Class Balanced Dynamic Acquisition for Domain Adaptive Semantic
Segmentation using Active Learning", arXiv 2311.14146 (2023). The paper observes that
uncertainty x diversity acquisition (RIPU, Xie et al. CVPR 2022) collects more and more imbalanced
labels as the budget grows, and proposes (i) re-weighting acquisition scores by the class statistics
of the labels collected so far and (ii) choosing the best regions globally over the target set instead
of a fixed budget per image. **The exact weighting formula is not public: what follows is balda's own
design** (docs/active.md), with every choice exposed.

1. Class frequencies. After each round ``n_c`` = acquired target pixels with label ``c`` (void
   excluded) and ``f_c = n_c / sum_k n_k``. Before the first round (nothing labelled yet) the
   predicted-class frequencies of the target set are used (estimated on a subset of images by
   :func:`balda.active.acquire.acquire_round`), or uniform weights.
2. Class weights (:func:`class_weights`), then normalised to mean 1 and clipped to ``clip``:

   * ``power`` (default): ``w_c = (f_c + eps)^(-alpha)``, ``alpha`` in [0.5, 1];
   * ``median_freq`` (Eigen & Fergus 2015): ``w_c = median_{k: f_k > 0}(f_k) / (f_c + eps)``;
   * ``effective_number`` (Cui et al. CVPR 2019): ``w_c = (1 - beta) / (1 - beta^{n_c})`` on pixel
     counts, with ``n_c = 0`` treated as ``n_c = 1`` (the largest weight) to stay finite.

   The clip is applied after the normalisation, so the mean may move away from 1 when it bites.
3. Re-weighted score (:func:`reweight_scores`) ``A~_i = A_i * w_{yhat_i}`` with the predicted class
   at the centre (``variant="center"``, default). The ``"region"`` variant uses the predicted-class
   histogram of the region: ``A~_i = A_i * sum_c (N_c(i)/|R(i)|) w_c`` = ``A_i`` times the mean of
   ``w_{yhat_j}`` over the in-image pixels ``j`` of ``R(i)`` (one box filter, no one-hot needed).
4. Dynamic global selection (:func:`dynamic_select`). Global budget per round
   ``K = ceil(budget/rounds * sum_i |image_i| / (2k+1)^2)`` regions (pixel mode: pixels). Quota rule:
   image ``i`` first contributes the ordered list of its top ``M_i = ceil(candidates_factor * n_i)``
   non-overlapping candidates from :func:`~balda.active.select.greedy_select_parallel`, where ``n_i``
   is its uniform (RIPU) share; the lists are pooled and the global top-``K`` by score is taken
   (ties: lower image index first, then list order), so each image receives a *prefix* of its own
   greedy list and its regions never overlap. Only these short lists are kept in memory, never the
   score maps.
5. Redistribution. An image whose whole list was taken while the list was full (``M_i`` entries) is
   *saturated*: it may hold more candidates scoring above the global threshold, and it is the only
   source of more candidates when the pool is smaller than ``K`` (high budgets). Saturated images are
   re-extracted with ``M_i <- max(2 M_i, M_i + ceil(shortfall / #saturated))`` (a second pass over
   those images only) and the global top-``K`` is re-taken, up to ``max_passes`` times. When no image
   is saturated the result equals the global top-``K`` over the images' complete greedy lists, and
   the budget is met exactly unless the target set has fewer than ``K`` candidates left.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from balda.active.scores import region_mean

__all__ = [
    "class_weights",
    "reweight_scores",
    "global_top_k",
    "dynamic_select",
    "DynamicResult",
    "kl_to_uniform",
]


def class_weights(
    counts,
    method: str = "power",
    alpha: float = 0.5,
    clip: Optional[Sequence[float]] = (0.2, 5.0),
    eps: float = 1e-4,
    beta: float = 0.9999,
) -> torch.Tensor:
    """Class weights from class counts (or frequencies), normalised to mean 1 then clipped.

    ``counts`` (K,) non-negative; for ``power`` / ``median_freq`` only the frequencies
    ``f = counts / sum(counts)`` matter; ``effective_number`` uses the counts themselves. All-zero
    counts give uniform weights. Returns float32 (K,) on the device of ``counts`` (CPU for lists).
    """
    n = torch.as_tensor(counts, dtype=torch.float64).flatten()
    if n.numel() == 0 or not torch.isfinite(n).all() or (n < 0).any():
        raise ValueError("class counts must be a non-empty vector of finite values >= 0")
    total = n.sum()
    if total <= 0:
        return torch.ones(n.numel(), dtype=torch.float32, device=n.device)
    f = n / total
    if method == "power":
        w = (f + eps) ** (-alpha)
    elif method == "median_freq":
        med = f[f > 0].median()
        w = med / (f + eps)
    elif method == "effective_number":
        w = (1.0 - beta) / (1.0 - beta ** n.clamp(min=1.0))
    else:
        raise ValueError(f"unknown class-weight method {method!r}; expected power, median_freq, effective_number")
    w = w / w.mean()
    if clip is not None:
        w = w.clamp(float(clip[0]), float(clip[1]))
    return w.to(torch.float32)


def reweight_scores(
    score: torch.Tensor,
    pred: torch.Tensor,
    weights: torch.Tensor,
    variant: str = "center",
    radius: int = 0,
) -> torch.Tensor:
    """``A~ = A * w[pred]`` (``center``) or ``A * mean_{j in R(i)} w[pred_j]`` (``region``).

    ``score`` and ``pred`` are (B, H, W) or (H, W); ``-inf`` scores stay ``-inf`` (weights > 0).
    """
    w = weights.to(device=score.device, dtype=torch.float32)
    wp = w[pred.long().clamp(0, w.numel() - 1)]
    if variant == "center" or radius == 0:
        pass
    elif variant == "region":
        squeeze = wp.dim() == 2
        wp = region_mean(wp[None] if squeeze else wp, radius)
        wp = wp[0] if squeeze else wp
    else:
        raise ValueError(f"unknown re-weighting variant {variant!r}; expected 'center' or 'region'")
    return score * wp


def kl_to_uniform(counts) -> float:
    """``KL(f || uniform) = log K + sum_c f_c log f_c`` of a class histogram (0 = perfectly balanced)."""
    n = np.asarray(counts, dtype=np.float64)
    f = n / max(n.sum(), 1e-12)
    nz = f > 0
    return float(np.log(len(f)) + (f[nz] * np.log(f[nz])).sum())


def global_top_k(candidate_scores: Sequence[torch.Tensor], k: int) -> np.ndarray:
    """How many of each image's (descending) candidate list enter the global top-``k``.

    Ties are broken by image index, then by list position, so every image receives a prefix of its
    list. Returns int64 (num_images,) counts summing to ``min(k, total candidates)``.
    """
    lens = [int(s.numel()) for s in candidate_scores]
    counts = np.zeros(len(lens), dtype=np.int64)
    total = sum(lens)
    if total == 0 or k <= 0:
        return counts
    s = torch.cat([c.detach().to("cpu", torch.float64).reshape(-1) for c in candidate_scores])
    img = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens))
    order = torch.sort(s, descending=True, stable=True).indices[: min(k, total)]
    counts += np.bincount(img[order].numpy(), minlength=len(lens))
    return counts


@dataclass
class DynamicResult:
    """Outcome of :func:`dynamic_select`."""

    #: image index -> (ys, xs) int64 numpy arrays of the picks (only images with picks).
    picks: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    #: image index -> scores of the picks (descending).
    scores: dict[int, np.ndarray] = field(default_factory=dict)
    budget: int = 0
    selected: int = 0
    passes: int = 1
    #: images re-extracted after the first pass.
    reextracted: int = 0
    #: images still saturated after the last pass (0 = exact global top-K).
    saturated: int = 0

    @property
    def shortfall(self) -> int:
        return self.budget - self.selected


Extractor = Callable[[int, int], tuple]


def dynamic_select(
    extract: Extractor,
    num_images: int,
    budget: int | Callable[[], int],
    quota: Sequence[int] | Callable[[int], int],
    max_passes: int = 3,
    first_pass: Optional[Sequence[tuple]] = None,
) -> DynamicResult:
    """Dynamic global selection with per-image candidate lists (module docstring, items 4-5).

    Args:
        extract: ``extract(i, M) -> (ys, xs, scores)``: the ordered top-``M`` non-overlapping
            candidates of image ``i`` (e.g. :func:`greedy_select_parallel` with ``return_scores``).
            Called once per image in the first pass (in index order), then only for saturated images.
        num_images: number of images.
        budget: global number of picks ``K`` (or a callable evaluated after the first pass, when e.g.
            the image sizes are known).
        quota: first-pass list length ``M_i`` per image: a sequence, or a callable ``quota(i)``
            evaluated just before image ``i`` is extracted.
        max_passes: maximum number of passes including the first.
        first_pass: optional first-pass lists already extracted with the quotas ``quota``
            (the caller ran its own first pass, e.g. during inference); skips those ``extract`` calls.
    """
    M = [0] * num_images
    cands: list[tuple[np.ndarray, np.ndarray, torch.Tensor]] = []
    for i in range(num_images):
        m = int(quota(i) if callable(quota) else quota[i])
        M[i] = max(m, 1)
        ys, xs, sc = first_pass[i] if first_pass is not None else extract(i, M[i])
        cands.append(_to_cpu(ys, xs, sc))
    K = int(budget() if callable(budget) else budget)
    res = DynamicResult(budget=K)
    passes = 1
    while True:
        counts = global_top_k([c[2] for c in cands], K)
        saturated = [i for i in range(num_images) if counts[i] == len(cands[i][2]) == M[i] and M[i] > 0]
        if not saturated or passes >= max_passes:
            break
        pool = sum(len(c[2]) for c in cands)
        short = max(K - pool, 0)
        extra = math.ceil(short / len(saturated)) if short else 0
        for i in saturated:
            M[i] = max(2 * M[i], M[i] + extra)
            cands[i] = _to_cpu(*extract(i, M[i]))
        res.reextracted += len(saturated)
        passes += 1
    res.passes = passes
    res.saturated = len(saturated)
    for i in range(num_images):
        c = int(counts[i])
        if c:
            ys, xs, sc = cands[i]
            res.picks[i] = (ys[:c], xs[:c])
            res.scores[i] = sc[:c].numpy()
    res.selected = int(counts.sum())
    return res


def _to_cpu(ys, xs, sc):
    ys = torch.as_tensor(ys).detach().cpu().long().numpy()
    xs = torch.as_tensor(xs).detach().cpu().long().numpy()
    sc = torch.as_tensor(sc).detach().cpu().to(torch.float64).reshape(-1)
    return ys, xs, sc
