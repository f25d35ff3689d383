"""Inference shared by evaluation, acquisition, CPSL preparation and ``balda predict``: image
normalisation, whole-image and sliding-window logits at the label resolution.

Logits are upsampled bilinearly (``align_corners=False``) to the label size, as the evaluation
protocol and every method of the library do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "normalize_images",
    "model_logits",
    "resize_logits",
    "predict_whole",
    "slide_windows",
    "predict_slide",
    "predict_logits",
]


def normalize_images(images, mean: Sequence[float], std: Sequence[float], device="cpu") -> torch.Tensor:
    """Raw RGB pixels -> the network input ``(rgb - mean) / std`` as (B, 3, H, W) float32 on ``device``.

    ``images``: one H x W x 3 array, a list/stack of them (B x H x W x 3, numpy or torch, uint8 or
    float in 0..255), or a (B, 3, H, W) / (3, H, W) tensor."""
    if isinstance(images, (list, tuple)):
        images = np.stack([np.asarray(i) for i in images])
    t = images.detach() if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images))
    if t.dim() == 3:
        t = t[None]
    if t.shape[1] != 3 and t.shape[-1] == 3:
        t = t.permute(0, 3, 1, 2)
    t = t.to(device=device, dtype=torch.float32)
    m = torch.as_tensor(mean, dtype=torch.float32, device=t.device).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=t.device).view(1, 3, 1, 1)
    return (t - m) / s


def model_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The logits of ``model(images)``: a :class:`SegOutput`'s ``logits``, a tensor, or the last of a tuple."""
    out = model(images)
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)):  # plain (features, logits)
        return out[-1]
    raise TypeError(f"model returned {type(out).__name__}; expected SegOutput or a tensor")


def _pair(x: Sequence[int] | int) -> tuple[int, int]:
    if isinstance(x, int):
        return x, x
    a, b = x
    return int(a), int(b)


def resize_logits(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize (align_corners=False) of (B, C, h, w) maps to ``size``; a no-op if equal."""
    size = _pair(size)
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def predict_whole(
    model: nn.Module, images: torch.Tensor, out_size: Sequence[int], size: Optional[Sequence[int]] = None
) -> torch.Tensor:
    """Whole-image inference: logits (B, K, *out_size).

    ``images`` (B, 3, H, W) are normalised; when ``size`` is given they are first resized to it
    (bilinear); the model's logits are upsampled bilinearly (align_corners=False) to ``out_size``.
    """
    x = resize_logits(images, size) if size is not None else images
    return resize_logits(model_logits(model, x), out_size)


def slide_windows(
    height: int, width: int, crop: Sequence[int] | int, stride: Sequence[int] | int
) -> list[tuple[int, int, int, int]]:
    """Sliding windows ``(y1, y2, x1, x2)`` over an image of at least ``crop`` size.

    ``n_y = max(ceil((H - ch) / sh), 0) + 1`` rows of windows starting at ``min(i * sh, H - ch)``
    (the last window is clamped to the border), likewise for columns; together they cover every
    pixel. Dimensions smaller than the crop give a single window of the image's size; a stride larger
    than the crop would leave gaps and is reduced to the crop.
    """
    ch, cw = _pair(crop)
    sh, sw = _pair(stride)
    if sh <= 0 or sw <= 0:
        raise ValueError(f"stride must be positive, got {(sh, sw)}")
    ch, cw = min(ch, height), min(cw, width)
    sh, sw = min(sh, ch), min(sw, cw)
    ny = max(math.ceil((height - ch) / sh), 0) + 1
    nx = max(math.ceil((width - cw) / sw), 0) + 1
    wins = []
    for i in range(ny):
        y1 = min(i * sh, height - ch)
        for j in range(nx):
            x1 = min(j * sw, width - cw)
            wins.append((y1, y1 + ch, x1, x1 + cw))
    return wins


def predict_slide(
    model: nn.Module,
    images: torch.Tensor,
    out_size: Sequence[int],
    crop: Sequence[int] | int,
    stride: Sequence[int] | int,
    num_classes: int,
    size: Optional[Sequence[int]] = None,
) -> torch.Tensor:
    """Sliding-window inference: logits (B, K, *out_size).

    The (optionally ``size``-resized) image is zero-padded at the bottom/right up to ``crop`` when
    smaller; each window's logits are upsampled to the window size and summed, then divided by the
    number of windows covering each pixel (``count``); the padding is cropped off and the result is
    upsampled bilinearly to ``out_size``.
    """
    x = resize_logits(images, size) if size is not None else images
    b, _, h, w = x.shape
    ch, cw = _pair(crop)
    pad_h, pad_w = max(ch - h, 0), max(cw - w, 0)
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))
    hp, wp = x.shape[-2:]
    acc = x.new_zeros((b, num_classes, hp, wp), dtype=torch.float32)
    count = x.new_zeros((1, 1, hp, wp), dtype=torch.float32)
    for y1, y2, x1, x2 in slide_windows(hp, wp, (ch, cw), stride):
        logits = model_logits(model, x[:, :, y1:y2, x1:x2])
        if logits.shape[1] != num_classes:
            raise ValueError(f"model gave {logits.shape[1]} classes, expected num_classes={num_classes}")
        acc[:, :, y1:y2, x1:x2] += resize_logits(logits.float(), (y2 - y1, x2 - x1))
        count[:, :, y1:y2, x1:x2] += 1
    acc = (acc / count)[:, :, :h, :w]
    return resize_logits(acc, out_size)


def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    out_size: Sequence[int],
    mode: str = "whole",
    size: Optional[Sequence[int]] = None,
    crop: Sequence[int] | int = 512,
    stride: Sequence[int] | int = 341,
    num_classes: Optional[int] = None,
) -> torch.Tensor:
    """Logits (B, K, *out_size) of normalised ``images`` by ``mode``: ``whole`` (:func:`predict_whole`,
    optionally at ``size``) or ``slide`` (:func:`predict_slide` with ``crop`` / ``stride``)."""
    if mode == "whole":
        return predict_whole(model, images, out_size, size=size)
    if mode == "slide":
        k = num_classes if num_classes is not None else int(getattr(model, "num_classes", 0)) or None
        if k is None:
            raise ValueError("sliding-window inference needs num_classes")
        return predict_slide(model, images, out_size, crop, stride, k, size=size)
    raise ValueError(f"unknown inference mode {mode!r}; expected 'whole' or 'slide'")
