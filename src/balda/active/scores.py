r"""Acquisition scores of RIPU: prediction uncertainty and region impurity, on the device.

RIPU: Xie, Yuan, Li, Liu, Cheng, "Towards Fewer Annotations: Active Learning via Region Impurity and
Prediction Uncertainty for Domain Adaptive Semantic Segmentation", CVPR 2022 (docs/active.md).
Scores are computed from logits upsampled to the label resolution of each target image.

With ``p_i = softmax(z_i)`` over ``K`` classes, ``yhat_i = argmax_c p_ic`` and ``R(i)`` the
``(2k+1) x (2k+1)`` window centred on ``i`` (zero padding at the borders):

* pixel uncertainty ``H_i = -sum_c p_ic log(p_ic + 1e-6) / log K`` (:func:`uncertainty`);
* ``N_c(i)`` = number of pixels of ``R(i)`` predicted as ``c``; ``|R(i)| = sum_c N_c(i)`` = number of
  *in-image* pixels of the window (smaller at the borders);
* region impurity ``P_i = -sum_c (N_c/|R|) log(N_c/|R| + 1e-6) / log K`` (:func:`impurity`);
* region uncertainty ``U_i = (sum_{j in R(i)} H_j) / |R(i)|`` (:func:`region_uncertainty`);
* region acquisition score ``A_i = P_i * U_i`` with ``k = 1`` (:func:`ripu_region_scores`);
* pixel acquisition score ``A_i = H_i * P_i`` with the impurity over a ``k = 32`` window and *not*
  divided by ``log K`` (as in the released code) (:func:`ripu_pixel_scores`).

Implementation. Window sums are separable box sums computed with prefix sums (an integral image):
along each axis ``S_i = C_{i+k} - C_{i-k-1}`` with ``C`` the cumulative sum of the zero-padded map, so
the cost is independent of the radius (the 65x65 window of pixel acquisition costs the same as 3x3).
The class counts ``N_c`` come from a ``uint8`` one-hot map accumulated in ``int32`` (exact), processed
in chunks of the classes present in the map so the peak memory stays ``O(chunk * H * W)``; float maps
(``H``) are accumulated in float64 and returned as float32. Everything stays on the input's device; no
Python loop over pixels.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = [
    "box_sum",
    "window_area",
    "uncertainty",
    "impurity",
    "region_uncertainty",
    "region_mean",
    "ripu_region_scores",
    "ripu_pixel_scores",
]

#: Classes per chunk when counting predicted classes in windows (bounds the peak memory).
CLASS_CHUNK = 8
_EPS = 1e-6


def _box_sum_1d(x: torch.Tensor, radius: int, dim: int, acc_dtype: torch.dtype) -> torch.Tensor:
    """Sum over ``[i - radius, i + radius]`` along ``dim`` (zero padding) via a prefix sum."""
    n = x.shape[dim]
    # F.pad pads the last dims first: build the pad spec for ``dim`` (a negative index).
    nd = x.dim()
    d = dim % nd
    pad = [0, 0] * (nd - d)
    pad[2 * (nd - 1 - d)] = radius + 1
    pad[2 * (nd - 1 - d) + 1] = radius
    c = torch.cumsum(F.pad(x, pad), dim=d, dtype=acc_dtype)
    return c.narrow(d, 2 * radius + 1, n) - c.narrow(d, 0, n)


def box_sum(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Sum of ``x`` over the ``(2r+1) x (2r+1)`` window of every pixel, zero padding (last two dims).

    Integer/bool inputs are accumulated exactly in int32; float inputs in float64 (float32 result).
    """
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    if x.dtype in (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32):
        acc = torch.int32
        x = x.to(torch.uint8) if x.dtype == torch.bool else x
        out_dtype = torch.int32
    elif x.dtype == torch.int64:
        acc, out_dtype = torch.int64, torch.int64
    else:
        acc = torch.float64 if x.device.type != "mps" else torch.float32
        out_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16, torch.float32) else x.dtype
    if radius == 0:
        return x.to(out_dtype)
    y = _box_sum_1d(x, radius, -1, acc)
    y = _box_sum_1d(y, radius, -2, acc)
    return y.to(out_dtype)


def window_area(height: int, width: int, radius: int, device=None) -> torch.Tensor:
    """``|R(i)|``: number of in-image pixels of the window of every pixel, float32 (H, W)."""
    ys = torch.arange(height, device=device)
    xs = torch.arange(width, device=device)
    cy = (ys + radius).clamp(max=height - 1) - (ys - radius).clamp(min=0) + 1
    cx = (xs + radius).clamp(max=width - 1) - (xs - radius).clamp(min=0) + 1
    return (cy[:, None] * cx[None, :]).to(torch.float32)


def uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Normalised entropy ``H = -sum_c p_c log(p_c + 1e-6) / log K`` of softmax(logits, dim=1).

    ``logits`` (B, K, H, W) -> (B, H, W) float32 (RIPU, Xie et al. CVPR 2022).
    """
    K = logits.shape[1]
    p = torch.softmax(logits.float(), dim=1)
    h = -(p + _EPS).log_().mul_(p).sum(dim=1)  # in place: one K x H x W temporary
    return h / math.log(K) if K > 1 else h


def impurity(pred: torch.Tensor, num_classes: int, radius: int, normalise: bool = True) -> torch.Tensor:
    """Region impurity ``P_i = -sum_c (N_c/|R|) log(N_c/|R| + 1e-6)`` (``/ log K`` if ``normalise``).

    ``pred`` (B, H, W) integer class map (argmax of the logits) -> (B, H, W) float32. ``N_c`` are the
    per-class counts in the ``(2r+1)^2`` window with zero padding, ``|R|`` the in-image window size.
    Pixels of ``pred`` outside ``[0, K)`` are counted in ``|R|`` but in no class.
    """
    if pred.dim() != 3:
        raise ValueError(f"pred must be (B, H, W), got {tuple(pred.shape)}")
    B, H, W = pred.shape
    area = window_area(H, W, radius, pred.device)
    out = torch.zeros(B, H, W, dtype=torch.float32, device=pred.device)
    pred = pred.long()
    # Absent classes contribute 0: count only the classes present (one small host sync).
    valid = (pred >= 0) & (pred < num_classes)
    present = torch.nonzero(torch.bincount(pred[valid], minlength=num_classes)).flatten()
    for c0 in range(0, present.numel(), CLASS_CHUNK):  # loop over class chunks, not pixels
        cls = present[c0 : c0 + CLASS_CHUNK].view(1, -1, 1, 1)
        onehot = (pred[:, None] == cls).to(torch.uint8)
        q = box_sum(onehot, radius).to(torch.float32).div_(area)
        out -= (q + _EPS).log_().mul_(q).sum(dim=1)
    if normalise and num_classes > 1:
        out /= math.log(num_classes)
    return out


def region_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean of ``x`` (B, H, W) over the in-image pixels of each window: ``box_sum(x) / |R|``."""
    H, W = x.shape[-2:]
    return box_sum(x, radius).to(torch.float32) / window_area(H, W, radius, x.device)


def region_uncertainty(h: torch.Tensor, radius: int) -> torch.Tensor:
    """Region uncertainty ``U_i = (sum_{j in R(i)} H_j) / |R(i)|`` of an uncertainty map (B, H, W)."""
    return region_mean(h, radius)


def ripu_region_scores(logits: torch.Tensor, radius: int = 1, pred: Optional[torch.Tensor] = None) -> torch.Tensor:
    """RIPU region-acquisition score ``A = P * U`` (both normalised by log K), (B, K, H, W) -> (B, H, W).
    ``pred`` (the argmax of ``logits``) may be passed when already computed."""
    K = logits.shape[1]
    pred = logits.max(dim=1).indices if pred is None else pred
    return impurity(pred, K, radius, normalise=True) * region_uncertainty(uncertainty(logits), radius)


def ripu_pixel_scores(logits: torch.Tensor, radius: int = 32, pred: Optional[torch.Tensor] = None) -> torch.Tensor:
    """RIPU pixel-acquisition score ``A = H * P`` with ``P`` over a ``(2r+1)^2`` window, not divided by
    ``log K`` (as in the released code), (B, K, H, W) -> (B, H, W)."""
    K = logits.shape[1]
    pred = logits.max(dim=1).indices if pred is None else pred
    return uncertainty(logits) * impurity(pred, K, radius, normalise=False)
