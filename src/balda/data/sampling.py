"""Rare Class Sampling (RCS, DAFormer; docs/baselines.md).

Given the per-image class pixel counts ``counts`` (N, K) of the source set:

* ``f_c = sum_n counts[n, c] / sum_{n,k} counts[n, k]`` -- the pixel frequency of class c;
* a class is *eligible* if at least one image holds more than ``min_pixels`` pixels of it;
* ``P(c) = softmax((1 - f_c) / T)`` over the eligible classes (0 for the others);
* a draw picks a class c ~ P, then an image uniformly among those with > ``min_pixels`` of c.
"""

from __future__ import annotations

import numpy as np


class RareClassSampler:
    """Samples (class, image index) pairs favouring rare classes; see the module docstring."""

    def __init__(self, counts, temperature: float = 0.01, min_pixels: int = 3000):
        counts = np.asarray(counts)
        if counts.ndim != 2 or counts.shape[0] == 0:
            raise ValueError(f"RCS needs an (N, K) count matrix with N > 0, got shape {counts.shape}")
        if np.any(counts < 0):
            raise ValueError("RCS class pixel counts must be non-negative")
        if temperature <= 0:
            raise ValueError(f"data.rcs.temperature must be > 0, got {temperature}")
        self.counts = counts.astype(np.int64)
        self.temperature = float(temperature)
        self.min_pixels = int(min_pixels)
        n, k = self.counts.shape
        total = self.counts.sum()
        if total == 0:
            raise ValueError("RCS: the source labels hold no labelled pixel")
        #: f_c, pixel frequency of each class over the dataset.
        self.class_freq = self.counts.sum(axis=0) / total
        has = self.counts > self.min_pixels  # (N, K)
        self._images = [np.flatnonzero(has[:, c]) for c in range(k)]
        eligible = has.any(axis=0)
        if not eligible.any():
            raise ValueError(
                f"RCS: no image holds more than min_pixels={self.min_pixels} pixels of any "
                "class; lower data.rcs.min_pixels"
            )
        logits = (1.0 - self.class_freq) / self.temperature
        logits = np.where(eligible, logits, -np.inf)
        e = np.exp(logits - logits[eligible].max())
        #: P(c), 0 for classes without an image holding > min_pixels of them.
        self.class_probs: np.ndarray = e / e.sum()
        self.num_classes = k

    def images_of(self, c: int) -> np.ndarray:
        """Indices of the images holding more than ``min_pixels`` pixels of class ``c`` (sorted)."""
        return self._images[int(c)]

    def sample(self, rng: np.random.Generator) -> tuple[int, int]:
        """Draw ``(class c ~ P, image index uniform among images_of(c))``."""
        c = int(rng.choice(self.num_classes, p=self.class_probs))
        imgs = self._images[c]
        return c, int(imgs[rng.integers(len(imgs))])

    def __repr__(self) -> str:
        top = np.argsort(-self.class_probs)[:3].tolist()
        return (
            f"RareClassSampler(N={len(self.counts)}, T={self.temperature}, "
            f"min_pixels={self.min_pixels}, top classes={top})"
        )


__all__ = ["RareClassSampler"]
