"""Per-image class pixel counts of a labelled dataset, computed once and cached on disk.

Rare class sampling (:mod:`balda.data.sampling`) needs, for every source image, the number of
pixels of each class. Reading ~25k GTA5 labels takes minutes, so the (N, K) count matrix is cached
in ``<root>/.balda_stats/<split>_<key>.npz`` where ``<key>`` hashes the dataset kind, item names and
label file sizes (:meth:`SegDataset.fingerprint`) and K. When the root is not writable the cache
goes to ``~/.cache/balda/`` instead. Writes are atomic (temporary file + ``os.replace``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np

from balda.core.progress import progress_bar
from balda.data.io import DataError

log = logging.getLogger("balda.data")


def _count(label: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(label.ravel(), minlength=256)[:num_classes].astype(np.int64)


def cache_key(dataset, num_classes: int) -> str:
    """Hash identifying the counts of ``dataset`` (names + label sizes + kind) with K classes."""
    return hashlib.sha1(f"{dataset.fingerprint()}:{num_classes}".encode()).hexdigest()[:16]


def cache_paths(dataset, num_classes: int = 19, cache_dir: Optional[os.PathLike] = None) -> list[Path]:
    """Candidate cache files, in order of preference: next to the dataset, then the user cache."""
    key = cache_key(dataset, num_classes)
    fallback = Path(cache_dir) if cache_dir is not None else Path.home() / ".cache" / "balda"
    return [
        Path(dataset.root) / ".balda_stats" / f"{dataset.split}_{key}.npz",
        fallback / f"{dataset.kind}_{dataset.split}_{key}.npz",
    ]


def _try_load(path: Path, names: list[str], num_classes: int) -> Optional[np.ndarray]:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            counts = z["counts"].astype(np.int64)
            cached_names = z["names"].tolist()
    except Exception as e:  # a corrupt cache is recomputed, never trusted
        log.warning("ignoring unreadable class-statistics cache %s: %s", path, e)
        return None
    if counts.shape != (len(names), num_classes) or cached_names != list(names):
        log.warning("ignoring class-statistics cache %s: it does not match the dataset", path)
        return None
    return counts


def _try_save(path: Path, counts: np.ndarray, names: list[str]) -> bool:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, counts=counts, names=np.asarray(names, dtype=str))
        os.replace(tmp, path)
        return True
    except OSError as e:
        log.info("cannot write class-statistics cache %s: %s", path, e)
        try:
            tmp.unlink()
        except OSError:
            pass
        return False


def class_pixel_counts(
    dataset,
    num_classes: int = 19,
    cache: bool = True,
    progress: bool = True,
    num_threads: int = 4,
    cache_dir: Optional[os.PathLike] = None,
) -> np.ndarray:
    """Return the (N, K) int64 matrix of pixels of class k in the label of item n (255 not counted).

    Labels are read with ``dataset.load_label`` (images are never decoded), ``num_threads`` at a
    time, with a rich progress bar if ``progress``. With ``cache`` the result is read from / written
    to the files of :func:`cache_paths` (``cache_dir`` overrides the ``~/.cache/balda`` fallback).
    An unreadable label raises :class:`DataError`, unless ``dataset.on_error == 'skip'``: then its
    row is zero (never sampled by RCS) and a warning is logged.
    """
    if not getattr(dataset, "labelled", False) or dataset.label_paths is None:
        raise DataError(f"class statistics need labels, but {dataset!r} is unlabelled", dataset.root)
    if not 1 <= num_classes <= 255:
        raise ValueError(f"num_classes must be in 1..255, got {num_classes}")
    names = list(dataset.names)
    paths = cache_paths(dataset, num_classes, cache_dir) if cache else []
    for p in paths:
        counts = _try_load(p, names, num_classes)
        if counts is not None:
            log.debug("class statistics of %r read from %s", dataset, p)
            return counts

    skip = getattr(dataset, "on_error", "raise") == "skip"

    def one(i: int) -> np.ndarray:
        try:
            return _count(dataset.load_label(i), num_classes)
        except DataError as e:
            if not skip:
                raise
            log.warning("class statistics: skipping unreadable label %d (%s): %s", i, names[i], e)
            return np.zeros(num_classes, dtype=np.int64)

    counts = np.zeros((len(names), num_classes), dtype=np.int64)
    with (
        progress_bar(f"class statistics {dataset.kind}/{dataset.split}", len(names), progress) as bar,
        ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool,
    ):
        for i, row in enumerate(pool.map(one, range(len(names)))):
            counts[i] = row
            bar.advance()

    for p in paths:
        if _try_save(p, counts, names):
            log.info("class statistics of %r cached in %s", dataset, p)
            break
    else:
        if paths:
            log.warning("could not cache the class statistics of %r in any of %s", dataset, [str(p) for p in paths])
    return counts


__all__ = ["class_pixel_counts", "cache_paths", "cache_key"]
