"""``digits``: an offline two-domain digit benchmark from scikit-learn's bundled handwritten digits.

``sklearn.datasets.load_digits`` ships 1,797 8x8 grey digits (values 0..16, ten classes) inside the
package, so this benchmark needs no download. The digits are split, stratified by class, into three
disjoint sets (default 50 / 30 / 20 %): the source, the target training set and the target test set.

* **Source** (MNIST-like): the digit upsampled with bicubic interpolation to ``0.75 size`` and
  centred on a ``size`` x ``size`` black canvas, white strokes, grey written as RGB.
* **Target** (MNIST-M-like, Ganin & Lempitsky 2015): the same kind of mask ``m`` in [0, 1], with
  (i) a different stroke thickness: grey dilation (p = 0.6) or erosion (p = 0.4) by a disc of
  radius ``round(size / 32)``; (ii) a random similarity transform: scale ``U(0.85, 1.05)``,
  rotation ``U(-10, 10)`` degrees, translation ``U(-0.08, 0.08) size`` per axis (bilinear, zero
  outside); (iii) blended over a random colour texture ``T`` (below) as MNIST-M does,
  ``x = |T - 255 m|`` per channel: the background is the texture and the digit is the texture
  inverted, so it is bright where the texture is dark and dark where it is bright; (iv) Gaussian
  noise with ``sigma ~ U(3, 10)`` grey levels, then rounding to ``uint8``.
  The texture is dark (p = 0.7) or bright, for all channels at once as in natural patches: the
  per-channel base levels are ``U(0, 60)`` or ``U(195, 255)`` (colours vary; the inverted digit
  keeps a contrast ``|255 - 2 T|``); each channel adds ``U(8, 30)`` times a unit-variance sum of
  three octaves of bicubically upsampled Gaussian noise (grids 2, 3, 5, weights 1, 0.6, 0.35) and,
  in 30 % of the images, stripes ``0.7 sin(2 pi <p, u> / lambda + phi)``; clipped to 0..255.
  At the default ``size`` of 16 (:data:`DEFAULT_SIZE`) with the ``configs/digits`` recipe (a
  ``digits_cnn`` of width 16, 14 px random crops, SGD, 1,000 iterations) source-only training
  reaches about 28 % on the target test set and training on the target about 62 %: source-only at
  about half the oracle, the regime of MNIST -> MNIST-M (calibration in ``results/digits``). At
  16 px the stroke change (a radius-1 disc) is coarse - an erosion can thin a digit to a few
  pixels - which is why the oracle stays far below MNIST-M's.

Layout under ``out`` (the image-list format of :mod:`balda.data.classification`, paths relative to
each domain folder)::

    source/images/NNNN.png  source/train.txt
    target/images/NNNN.png  target/train.txt  target/test.txt
    meta.json  samples.png

``NNNN`` is the index of the digit in ``load_digits()``. ``meta.json`` (written last) records the
parameters, the split sizes and class counts. Every random draw comes from
``default_rng([seed, tag, index])`` and all pixel work is numpy (no OpenCV), so the output is
byte-identical for a seed on a given platform. Generating the 1,797 images takes about 2 s of CPU.

Entry points: :func:`generate_digits`, :func:`digits_exists`, :func:`load_digits_meta`,
:func:`render_source`, :func:`render_target`, :func:`split_digits`.
"""

from __future__ import annotations

import functools
import gzip
import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from importlib import util
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from balda.core.atomic import atomic_write_text

__all__ = [
    "generate_digits",
    "digits_exists",
    "load_digits_meta",
    "load_sklearn_digits",
    "render_source",
    "render_target",
    "split_digits",
    "GENERATOR",
    "GENERATOR_VERSION",
    "DEFAULT_FRACTIONS",
]

GENERATOR = "balda.digits"
#: Bumped whenever the rendering changes, so stale folders are regenerated.
GENERATOR_VERSION = 1
#: Shares of every class going to (source, target train, target test).
DEFAULT_FRACTIONS = (0.5, 0.3, 0.2)
#: Image side of the benchmark: 16 px keeps a 3-seed grid of every base, +GH and +GH++ within CPU hours.
DEFAULT_SIZE = 16
_TAG_SPLIT, _TAG_TARGET = 0x5B17, 0x7A26
#: Noise grids and weights of the texture octaves.
_OCTAVES, _OCTAVE_WEIGHTS = (2, 3, 5), (1.0, 0.6, 0.35)


def load_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """``(images float64 (1797, 8, 8) in [0, 1], labels int64 (1797,))``: scikit-learn's bundled copy
    of the UCI handwritten digits (``load_digits``, values 0..16 divided by 16).

    The bundled ``sklearn/datasets/data/digits.csv.gz`` (64 pixel columns then the label) is read
    directly when present, which spares the slow ``import sklearn``; otherwise ``load_digits()``."""
    spec = util.find_spec("sklearn")
    for loc in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(loc) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt") as f:
                data = np.loadtxt(f, delimiter=",")
            if data.shape == (1797, 65):
                return data[:, :64].reshape(-1, 8, 8) / 16.0, data[:, 64].astype(np.int64)
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - scikit-learn is a test dependency
        raise ImportError("the digits benchmark needs scikit-learn: pip install scikit-learn") from e
    d = load_digits()
    return np.asarray(d.images, dtype=np.float64) / 16.0, np.asarray(d.target, dtype=np.int64)


# ------------------------------------------------------------------------------------------ geometry
@functools.lru_cache(maxsize=64)
def _cubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) bicubic interpolation matrix (Keys a = -0.5, half-pixel centres, edge pixels
    replicated): ``y = A x`` resizes a 1-D signal; ``A X A'^T`` resizes an image."""
    x = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    x0 = np.floor(x).astype(np.int64)
    A = np.zeros((n_out, n_in))
    for k in range(-1, 3):
        t = np.abs(x - (x0 + k))
        w = np.where(t <= 1, 1.5 * t**3 - 2.5 * t**2 + 1, np.where(t < 2, -0.5 * t**3 + 2.5 * t**2 - 4 * t + 2, 0.0))
        np.add.at(A, (np.arange(n_out), np.clip(x0 + k, 0, n_in - 1)), w)
    A.setflags(write=False)
    return A


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bicubic resize of an (H, W) or (H, W, C) float array to (h, w)."""
    Ah, Aw = _cubic_matrix(img.shape[0], h), _cubic_matrix(img.shape[1], w)
    if img.ndim == 2:
        return Ah @ img @ Aw.T
    return (Ah @ img.transpose(2, 0, 1) @ Aw.T).transpose(1, 2, 0)


def _digit_mask(digit: np.ndarray, size: int) -> np.ndarray:
    """The 8x8 digit upsampled (bicubic) to ``round(0.75 size)`` and centred on a ``size`` canvas, in [0, 1]."""
    inner = max(8, int(round(0.75 * size)))
    m = np.clip(_resize(digit, inner, inner), 0.0, 1.0)
    out = np.zeros((size, size))
    o = (size - inner) // 2
    out[o : o + inner, o : o + inner] = m[: size - o, : size - o]
    return out


def _warp(mask: np.ndarray, scale: float, angle_deg: float, tx: float, ty: float) -> np.ndarray:
    """Similarity transform about the centre (scale, rotation, translation in pixels): output pixel
    ``p`` samples the input at ``c + R(-angle) (p - c - t) / scale``, bilinearly, 0 outside."""
    H, W = mask.shape
    cy, cx = (H - 1) / 2, (W - 1) / 2
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    a = math.radians(angle_deg)
    dy, dx = (yy - cy - ty) / scale, (xx - cx - tx) / scale
    sy = cy + math.cos(a) * dy - math.sin(a) * dx
    sx = cx + math.sin(a) * dy + math.cos(a) * dx
    y0, x0 = np.floor(sy).astype(np.int64), np.floor(sx).astype(np.int64)
    fy, fx = sy - y0, sx - x0
    padded = np.pad(mask, 1)

    def at(y, x):
        return padded[np.clip(y + 1, 0, H + 1), np.clip(x + 1, 0, W + 1)]

    out = (
        at(y0, x0) * (1 - fy) * (1 - fx)
        + at(y0, x0 + 1) * (1 - fy) * fx
        + at(y0 + 1, x0) * fy * (1 - fx)
        + at(y0 + 1, x0 + 1) * fy * fx
    )
    return np.clip(out, 0.0, 1.0)


def _morph(mask: np.ndarray, radius: int, dilate: bool) -> np.ndarray:
    """Grey dilation (max) or erosion (min) of ``mask`` by a disc of ``radius`` pixels."""
    H, W = mask.shape
    padded = np.pad(mask, radius)
    shifts = [
        padded[radius + dy : radius + dy + H, radius + dx : radius + dx + W]
        for dy in range(-radius, radius + 1)
        for dx in range(-radius, radius + 1)
        if dy * dy + dx * dx <= radius * radius
    ]
    return np.max(shifts, axis=0) if dilate else np.min(shifts, axis=0)


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random colour texture patch in [0, 255], float (size, size, 3) (see the module docstring)."""
    n = np.zeros((size, size, 3))
    for g, w in zip(_OCTAVES, _OCTAVE_WEIGHTS):
        n += w * _resize(rng.normal(size=(g, g, 3)), size, size)
    n /= math.sqrt(sum(w * w for w in _OCTAVE_WEIGHTS))
    if rng.random() < 0.3:
        theta, lam, phi = rng.uniform(0, math.pi), rng.uniform(0.2, 0.5) * size, rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:size, 0:size]
        n += 0.7 * np.sin(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / lam + phi)[..., None]
    dark = rng.random() < 0.7
    base = rng.uniform(0.0, 60.0, size=3) if dark else rng.uniform(195.0, 255.0, size=3)
    amp = rng.uniform(8.0, 30.0, size=3)
    return np.clip(base + amp * n, 0.0, 255.0)


# ------------------------------------------------------------------------------------------ rendering
def render_source(digit: np.ndarray, size: int = DEFAULT_SIZE) -> np.ndarray:
    """The source image of an 8x8 digit (values in [0, 1]): white strokes on black, ``uint8`` (size, size, 3)."""
    m = _digit_mask(np.asarray(digit, dtype=np.float64), size)
    g = np.rint(255.0 * m).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def render_target(digit: np.ndarray, rng: np.random.Generator, size: int = DEFAULT_SIZE) -> np.ndarray:
    """The MNIST-M-style target image of an 8x8 digit, ``uint8`` (size, size, 3); draws from ``rng``
    in this order: stroke (dilate?), transform (scale, angle, tx, ty), texture, noise sigma, noise."""
    m = _digit_mask(np.asarray(digit, dtype=np.float64), size)
    radius = max(1, int(round(size / 32)))
    m = _morph(m, radius, dilate=bool(rng.random() < 0.6))
    scale, angle = rng.uniform(0.85, 1.05), rng.uniform(-10.0, 10.0)
    tx, ty = rng.uniform(-0.08, 0.08, size=2) * size
    m = _warp(m, scale, angle, tx, ty)
    tex = _texture(rng, size)
    x = np.abs(tex - 255.0 * m[..., None])
    sigma = rng.uniform(3.0, 10.0)
    x = x + rng.normal(0.0, sigma, size=x.shape)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def split_digits(
    labels: np.ndarray,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    n_per_class: Optional[int] = None,
) -> dict:
    """Disjoint, class-stratified index sets ``{'source', 'target_train', 'target_test'}`` (sorted
    int64 arrays): within class ``c`` (``n_c`` digits, permuted by ``default_rng([seed, tag, c])``
    and, with ``n_per_class``, cut to the first ``n_per_class``) the first ``round(f_0 n_c)`` go to
    the source, the next ``round(f_1 n_c)`` to the target training set, the rest to the target
    test set."""
    f = np.asarray(fractions, dtype=np.float64)
    if f.shape != (3,) or (f <= 0).any() or abs(f.sum() - 1.0) > 1e-6:
        raise ValueError(f"fractions must be 3 positive shares summing to 1, got {fractions!r}")
    if n_per_class is not None and n_per_class < 3:
        raise ValueError(f"n_per_class must be >= 3 or None, got {n_per_class}")
    parts: dict[str, list] = {"source": [], "target_train": [], "target_test": []}
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[np.random.default_rng([int(seed), _TAG_SPLIT, int(c)]).permutation(idx.size)][:n_per_class]
        a = int(round(f[0] * idx.size))
        b = a + int(round(f[1] * idx.size))
        parts["source"].append(idx[:a])
        parts["target_train"].append(idx[a:b])
        parts["target_test"].append(idx[b:])
    return {k: np.sort(np.concatenate(v)).astype(np.int64) for k, v in parts.items()}


# ------------------------------------------------------------------------------------------- folders
#: (split key, domain folder, list file name)
_SPLITS = (
    ("source", "source", "train.txt"),
    ("target_train", "target", "train.txt"),
    ("target_test", "target", "test.txt"),
)


def _params(seed, size, fractions, n_per_class) -> dict:
    return {
        "seed": int(seed),
        "size": int(size),
        "fractions": [round(float(v), 6) for v in fractions],
        "n_per_class": None if n_per_class is None else int(n_per_class),
        "version": GENERATOR_VERSION,
    }


def load_digits_meta(out: str | os.PathLike) -> Optional[dict]:
    """The ``meta.json`` of a generated digits folder, or None."""
    try:
        meta = json.loads((Path(out) / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("generator") == GENERATOR else None


def digits_exists(
    out: str | os.PathLike,
    seed: int = 0,
    size: int = DEFAULT_SIZE,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    n_per_class: Optional[int] = None,
) -> bool:
    """Whether ``out`` holds a *complete* digits benchmark made with exactly these parameters
    (``meta.json`` says so, every list has the recorded number of entries and every listed image exists)."""
    meta = load_digits_meta(out)
    if meta is None or not meta.get("complete") or meta.get("params") != _params(seed, size, fractions, n_per_class):
        return False
    out = Path(out)
    counts = meta.get("summary", {}).get("num_images", {})
    for key, folder, name in _SPLITS:
        try:
            lines = [ln for ln in (out / folder / name).read_text().splitlines() if ln.strip()]
        except OSError:
            return False
        if len(lines) != counts.get(key) or not all((out / folder / ln.rsplit(None, 1)[0]).is_file() for ln in lines):
            return False
    return True


def _save_png(path: Path, img: np.ndarray) -> None:
    Image.fromarray(img).save(path, format="PNG", compress_level=6)


def generate_digits(
    out: str | os.PathLike,
    seed: int = 0,
    size: int = DEFAULT_SIZE,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    n_per_class: Optional[int] = None,
    samples: int = 16,
) -> dict:
    """Write the digits benchmark under ``out`` (layout in the module docstring) and return its summary.

    If ``out`` already holds a complete benchmark with the same parameters nothing is rewritten
    (``reused``: True); a benchmark with other parameters is replaced; ``source/`` or ``target/``
    folders that do not belong to a digits benchmark raise :class:`FileExistsError`.
    ``samples.png`` tiles the first ``samples`` source images over the first ``samples`` target
    training images. ``n_per_class`` uses only that many digits of each class (a small, quick
    benchmark for tests; None = all 1,797). The summary holds ``params``, ``num_images`` and ``class_counts`` per split,
    ``classes``, ``paths`` (relative to ``out``) and, in the returned dict only, ``root``,
    ``reused`` and ``seconds``.
    """
    t0 = time.perf_counter()
    if int(size) < 8:
        raise ValueError(f"digits size must be >= 8, got {size}")
    out = Path(out)
    params = _params(seed, size, fractions, n_per_class)
    if digits_exists(out, seed, size, fractions, n_per_class):
        meta = load_digits_meta(out)
        return {**meta["summary"], "root": str(out), "reused": True, "seconds": time.perf_counter() - t0}
    old = load_digits_meta(out)
    for sub in ("source", "target"):
        d = out / sub
        if d.exists() and any(d.iterdir()):
            if old is None:
                raise FileExistsError(f"{d} exists and is not a digits benchmark (no meta.json); remove it")
            shutil.rmtree(d)
    images, labels = load_sklearn_digits()
    split = split_digits(labels, seed, fractions, n_per_class)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "meta.json", json.dumps({"generator": GENERATOR, "complete": False, "params": params}))
    for folder in ("source", "target"):
        (out / folder / "images").mkdir(parents=True, exist_ok=True)
    rendered: dict[str, list[np.ndarray]] = {}
    for key, folder, name in _SPLITS:
        lines, imgs = [], []
        for i in split[key].tolist():
            if folder == "source":
                img = render_source(images[i], size)
            else:
                img = render_target(images[i], np.random.default_rng([int(seed), _TAG_TARGET, i]), size)
            rel = f"images/{i:04d}.png"
            _save_png(out / folder / rel, img)
            lines.append(f"{rel} {int(labels[i])}\n")
            if len(imgs) < samples:
                imgs.append(img)
        atomic_write_text(out / folder / name, "".join(lines))
        rendered[key] = imgs
    if samples > 0:
        rows = [
            np.concatenate(rendered[k] + [np.zeros_like(rendered[k][0])] * (samples - len(rendered[k])), 1)
            for k in ("source", "target_train")
        ]
        _save_png(out / "samples.png", np.concatenate(rows, 0))
    summary = {
        "params": params,
        "classes": [str(c) for c in range(10)],
        "num_images": {k: int(v.size) for k, v in split.items()},
        "class_counts": {k: np.bincount(labels[v], minlength=10).tolist() for k, v in split.items()},
        "paths": {"source": "source/train.txt", "target_train": "target/train.txt", "target_test": "target/test.txt"},
    }
    meta = {"generator": GENERATOR, "complete": True, "params": params, "summary": summary}
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=1, sort_keys=True))
    return {**summary, "root": str(out), "reused": False, "seconds": time.perf_counter() - t0}
