r"""Greedy non-maximum-suppression selection of regions / pixels, in an exact parallel form.

The selection of RIPU (Xie et al., CVPR 2022) is a sequential greedy: take the highest remaining score,
label its window, remove (suppress) every candidate within Chebyshev distance ``s`` of it (``s = 2k``
for ``(2k+1)^2`` regions so that regions never overlap; ``s = k`` for pixel acquisition), repeat until
the budget ``n`` is spent. Already-labelled pixels and ``-inf``/NaN scores are never candidates.

Order. Candidates are totally ordered by ``(score descending, flat index ascending)``: ties are broken
by the flat (row-major) index, the same rule as ``numpy.argmax`` in the sequential reference.

Parallel form (:func:`greedy_select_parallel`). A candidate that is the maximum (in that order) of its
suppression window among the *remaining* candidates is always selected by the greedy: nothing in its
window can be picked before it, and only a pick inside its window could remove it. So

    repeat: select every remaining window-maximum; remove the windows of the selected; until empty

yields exactly the greedy's selected set (the lexicographically-first maximal independent set of the
ordering), and the greedy picks them in descending order, so its first ``n`` picks are the top-``n`` of
the set. Each step is a window maximum and a dilation, both separable (1-D sliding maxima along rows
then columns, each O(log r) element-wise ops by doubling). Early exit: once ``n`` picks are known and
no remaining candidate ranks above the ``n``-th of them, later steps can only add lower-ranked picks.
The ``t``-th greedy pick is always selected by step ``t``, so at most ``n`` steps run (typically a
handful on real score maps); each step costs one host sync.

Rank prefix. A pick depends only on higher-ranked candidates, so the greedy restricted to the ``T``
best candidates makes exactly the greedy's picks among them; every one of those candidates is picked
or removed by a pick, and a pick removes at most ``(2s+1)^2`` of them, so ``T = n (2s+1)^2``
candidates already hold ``>= n`` picks. Only they are ranked (``topk`` + a stable sort of ``T``
scores instead of sorting the whole map).

:func:`greedy_select_sequential` is the plain loop, kept as the test reference only.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["greedy_select_parallel", "greedy_select_sequential", "regions_to_mask", "candidate_mask"]


def candidate_mask(score: torch.Tensor, labelled_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Pixels that may be selected: score not NaN nor ``-inf``, and not already labelled."""
    valid = ~torch.isnan(score) & (score != float("-inf"))
    if labelled_mask is not None:
        valid &= ~labelled_mask.to(device=score.device, dtype=torch.bool)
    return valid


def _max_1d(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Sliding max over ``[i - r, i + r]`` along ``dim`` (``-inf`` outside) by doubling: after
    ``j`` steps ``m[i] = max x[i : i + 2^j]``; two overlapping windows of the largest power of two
    ``w <= 2r+1`` cover the window. O(log r) element-wise ops, no pooling kernel."""
    k = 2 * radius + 1
    L = x.shape[dim]
    pad = [0, 0] * (x.dim() - dim % x.dim())
    pad[-2], pad[-1] = radius, radius
    m = F.pad(x, pad, value=float("-inf"))
    w = 1
    while 2 * w <= k:
        n = m.shape[dim]
        m = torch.maximum(m.narrow(dim, 0, n - w), m.narrow(dim, w, n - w))
        w *= 2
    return torch.maximum(m.narrow(dim, 0, L), m.narrow(dim, k - w, L))


def _window_max(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Max of an (H, W) float map over the ``(2r+1)^2`` window of every pixel (``-inf`` outside the
    image). The square max is separable: a 1-D sliding max along rows, then along columns."""
    if radius == 0:
        return x
    return _max_1d(_max_1d(x, radius, 1), radius, 0)


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of an (H, W) bool mask by a square of radius ``radius`` (zero padding)."""
    if radius == 0:
        return mask
    return _window_max(mask.to(torch.float32), radius) > 0


def greedy_select_parallel(
    score: torch.Tensor,
    radius_suppress: int,
    n: Optional[int] = None,
    labelled_mask: Optional[torch.Tensor] = None,
    return_scores: bool = False,
):
    """Exact parallel form of the greedy NMS selection (see the module docstring).

    Args:
        score: (H, W) acquisition scores (any float dtype, any device).
        radius_suppress: Chebyshev radius of the suppression window (``2k`` for regions).
        n: number of picks; ``None`` selects until no candidate remains.
        labelled_mask: (H, W) bool, pixels already labelled (never selected).
        return_scores: also return the scores of the picks.

    Returns:
        ``(ys, xs)`` (or ``(ys, xs, scores)``): int64 tensors on ``score.device`` of the picks in
        greedy order (descending score, ties by flat index); fewer than ``n`` when candidates run out.
    """
    if score.dim() != 2:
        raise ValueError(f"score must be (H, W), got {tuple(score.shape)}")
    if radius_suppress < 0:
        raise ValueError("radius_suppress must be >= 0")
    H, W = score.shape
    dev = score.device
    N = H * W
    empty = torch.zeros(0, dtype=torch.long, device=dev)
    valid = candidate_mask(score, labelled_mask)
    if n is not None and n <= 0:
        return (empty, empty, score.new_zeros(0)) if return_scores else (empty, empty)

    flat = score.reshape(-1)
    cand = valid.reshape(-1)
    if n is not None:
        # Rank prefix: the greedy picks among the T best candidates are its first picks, and T
        # candidates hold at least T / (2s+1)^2 picks (each pick removes at most (2s+1)^2 of them).
        # The prefix is cut exactly at T in the greedy's total order (score descending, then flat
        # index): all candidates above the T-th best score, then the lowest-index ones tied with it.
        # (Keeping every tie would make a constant map, e.g. a random-init model's, all candidates.)
        T = n * (2 * radius_suppress + 1) ** 2
        if T < N and T < int(cand.sum()):
            vals = torch.where(cand, flat, torch.full_like(flat, float("-inf")))
            thr = torch.topk(vals, T, sorted=False).values.min()
            tied = torch.nonzero(cand & (flat == thr), as_tuple=False).squeeze(1)  # ascending index
            cand = cand & (flat > thr)
            cand[tied[: T - int(cand.sum())]] = True
    idx = torch.nonzero(cand, as_tuple=False).squeeze(1)  # ascending flat index
    C = idx.numel()
    if C == 0:
        return (empty, empty, score.new_zeros(0)) if return_scores else (empty, empty)
    # by_rank[r] = flat index of the candidate of rank r (0 = best); the stable sort keeps the
    # flat-index order among equal scores.
    by_rank = idx[torch.sort(flat[idx], descending=True, stable=True).indices]
    ar = torch.arange(C, device=dev)
    # Priority C - rank (exact in float32 below 2^24 candidates); -1 = not a candidate.
    pdtype = torch.float32 if C < (1 << 24) else torch.float64
    prio = torch.full((N,), -1.0, dtype=pdtype, device=dev)
    prio[by_rank] = (C - ar).to(pdtype)
    prio = prio.view(H, W)
    neg = torch.tensor(-1.0, dtype=pdtype, device=dev)

    remaining = cand.view(H, W).clone()
    selected = torch.zeros_like(remaining)
    while True:
        p = torch.where(remaining, prio, neg)
        new = remaining & (p == _window_max(p, radius_suppress))
        selected |= new
        remaining &= ~_dilate(new, radius_suppress)
        sel_r = selected.reshape(-1)[by_rank]  # in rank order
        rem_r = remaining.reshape(-1)[by_rank]
        if n is None:
            if not bool(rem_r.any()):
                break
            continue
        # Stop when the top-n picks can no longer change: no remaining candidate ranks above the
        # n-th pick so far (one host sync per step).
        best_remaining = torch.where(rem_r, ar, C).min()
        csum = torch.cumsum(sel_r.to(torch.int32), 0)
        kth = torch.searchsorted(csum, torch.tensor([n], dtype=csum.dtype, device=dev))[0]  # C if < n picks
        done = (best_remaining >= C) | (best_remaining > kth)
        if bool(done):
            break

    picks = by_rank[selected.reshape(-1)[by_rank]]  # greedy order
    if n is not None:
        picks = picks[:n]
    ys, xs = picks // W, picks % W
    if return_scores:
        return ys, xs, flat[picks]
    return ys, xs


def greedy_select_sequential(
    score, radius_suppress: int, n: Optional[int] = None, labelled_mask=None
) -> tuple[np.ndarray, np.ndarray]:
    """Reference sequential greedy (a Python loop; for tests only). Same contract as the parallel one,
    returns numpy int64 arrays."""
    s = np.array(score.detach().cpu().numpy() if isinstance(score, torch.Tensor) else score, dtype=np.float64)
    s[np.isnan(s)] = -np.inf
    if labelled_mask is not None:
        lm = labelled_mask.cpu().numpy() if isinstance(labelled_mask, torch.Tensor) else labelled_mask
        s[np.asarray(lm, dtype=bool)] = -np.inf
    H, W = s.shape
    r = radius_suppress
    ys, xs = [], []
    while n is None or len(ys) < n:
        i = int(np.argmax(s))  # first occurrence = smallest flat index among ties
        if s.flat[i] == -np.inf:
            break
        y, x = divmod(i, W)
        ys.append(y)
        xs.append(x)
        s[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1] = -np.inf
    return np.array(ys, dtype=np.int64), np.array(xs, dtype=np.int64)


def regions_to_mask(ys, xs, radius: int, shape: tuple[int, int], device=None) -> torch.Tensor:
    """(H, W) bool mask of the union of the ``(2r+1)^2`` windows centred on ``(ys, xs)`` (clipped to
    the image)."""
    H, W = int(shape[0]), int(shape[1])
    ys = torch.as_tensor(ys, dtype=torch.long, device=device)
    xs = torch.as_tensor(xs, dtype=torch.long, device=ys.device)
    m = torch.zeros(H * W, dtype=torch.bool, device=ys.device)
    if ys.numel():
        m[ys * W + xs] = True
    return _dilate(m.view(H, W), radius)
