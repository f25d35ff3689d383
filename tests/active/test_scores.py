"""RIPU scores against brute-force per-pixel references (small maps, borders, random K)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from balda.active.scores import (
    box_sum,
    impurity,
    region_uncertainty,
    ripu_pixel_scores,
    ripu_region_scores,
    uncertainty,
    window_area,
)


def _window(y, x, r, H, W):
    return slice(max(0, y - r), min(H, y + r + 1)), slice(max(0, x - r), min(W, x + r + 1))


def ref_uncertainty(logits: np.ndarray) -> np.ndarray:
    B, K, H, W = logits.shape
    out = np.zeros((B, H, W))
    for b in range(B):
        for y in range(H):
            for x in range(W):
                z = logits[b, :, y, x].astype(np.float64)
                p = np.exp(z - z.max())
                p /= p.sum()
                out[b, y, x] = -sum(pc * math.log(pc + 1e-6) for pc in p) / math.log(K)
    return out


def ref_impurity(pred: np.ndarray, K: int, r: int, normalise: bool) -> np.ndarray:
    B, H, W = pred.shape
    out = np.zeros((B, H, W))
    for b in range(B):
        for y in range(H):
            for x in range(W):
                win = pred[b][_window(y, x, r, H, W)].ravel()
                area = win.size
                s = 0.0
                for c in range(K):
                    q = (win == c).sum() / area
                    s -= q * math.log(q + 1e-6)
                out[b, y, x] = s / math.log(K) if normalise else s
    return out


def ref_region_mean(h: np.ndarray, r: int) -> np.ndarray:
    B, H, W = h.shape
    out = np.zeros((B, H, W))
    for b in range(B):
        for y in range(H):
            for x in range(W):
                out[b, y, x] = h[b][_window(y, x, r, H, W)].mean()
    return out


@pytest.mark.parametrize("seed", range(4))
def test_uncertainty_matches_reference(seed):
    g = torch.Generator().manual_seed(seed)
    K = int(torch.randint(2, 8, (1,), generator=g))
    logits = torch.randn(2, K, 5, 7, generator=g) * 3
    got = uncertainty(logits)
    assert got.dtype == torch.float32 and got.shape == (2, 5, 7)
    np.testing.assert_allclose(got.numpy(), ref_uncertainty(logits.numpy()), atol=1e-5)
    assert float(got.min()) >= -1e-6 and float(got.max()) <= 1 + 1e-6


@pytest.mark.parametrize("radius", [1, 2])
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("normalise", [True, False])
def test_impurity_matches_reference(radius, seed, normalise):
    g = torch.Generator().manual_seed(100 * seed + radius)
    K = int(torch.randint(2, 12, (1,), generator=g))  # > CLASS_CHUNK sometimes: chunking is exercised
    H, W = int(torch.randint(3, 9, (1,), generator=g)), int(torch.randint(3, 9, (1,), generator=g))
    # Few distinct classes per map so windows are not all pure.
    pred = torch.randint(0, min(K, 4), (2, H, W), generator=g) * max(1, K // 4)
    pred = pred.clamp(max=K - 1)
    got = impurity(pred, K, radius, normalise=normalise)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), ref_impurity(pred.numpy(), K, radius, normalise), atol=1e-5)


def test_impurity_window_larger_than_image_and_pure_regions():
    pred = torch.zeros(1, 4, 5, dtype=torch.long)
    assert torch.all(impurity(pred, 19, 32) < 1e-5)  # a pure window has (almost) zero impurity
    pred[0, :, 2:] = 3
    got = impurity(pred, 19, 32, normalise=False)
    q = np.array([8, 12]) / 20.0
    np.testing.assert_allclose(got.numpy(), -(q * np.log(q + 1e-6)).sum(), atol=1e-5)


@pytest.mark.parametrize("radius", [1, 2, 5])
def test_region_uncertainty_and_box_sum(radius):
    g = torch.Generator().manual_seed(radius)
    h = torch.rand(2, 6, 9, generator=g)
    np.testing.assert_allclose(region_uncertainty(h, radius).numpy(), ref_region_mean(h.numpy(), radius), atol=1e-6)
    # Integer box sums are exact; |R| counts the in-image pixels.
    ones = torch.ones(1, 6, 9, dtype=torch.uint8)
    bs = box_sum(ones, radius)
    assert bs.dtype == torch.int32
    assert torch.equal(bs[0].float(), window_area(6, 9, radius))
    assert window_area(6, 9, radius)[0, 0] == min(radius + 1, 6) * min(radius + 1, 9)


def test_ripu_region_and_pixel_scores():
    g = torch.Generator().manual_seed(7)
    K = 5
    logits = torch.randn(1, K, 6, 8, generator=g) * 2
    pred = logits.argmax(1).numpy()
    Hmap = ref_uncertainty(logits.numpy())
    want_region = ref_impurity(pred, K, 1, True) * ref_region_mean(Hmap, 1)
    np.testing.assert_allclose(ripu_region_scores(logits, 1).numpy(), want_region, atol=1e-5)
    # Pixel acquisition: impurity over a 65x65 window (covers the map), not divided by log K.
    want_pixel = Hmap * ref_impurity(pred, K, 32, False)
    np.testing.assert_allclose(ripu_pixel_scores(logits, 32).numpy(), want_pixel, atol=1e-5)
    want_pixel3 = Hmap * ref_impurity(pred, K, 3, False)
    np.testing.assert_allclose(ripu_pixel_scores(logits, 3).numpy(), want_pixel3, atol=1e-5)
