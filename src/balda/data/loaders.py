"""Step-deterministic training loaders.

Every training batch is a pure function of ``(seed, stream, step)``:

* :class:`StepBatchSampler` lays an endless sequence of permutations
  ``perm_e = default_rng([seed, stream, e]).permutation(n)`` end to end; batch ``s`` takes positions
  ``s*B .. (s+1)*B - 1`` of it. Item ``j`` of batch ``s`` carries a ``sample_seed`` derived from
  ``(seed, stream, s, j)`` that seeds its crop/flip/jitter. With rare class sampling, item ``j`` is
  instead ``rcs.sample(default_rng([seed, stream, s, j]))`` and carries the sampled class.
* :class:`TrainView` turns such a key into a transformed sample.
* :class:`UDALoader` zips a source and a target stream (``stream`` 0 and 1).

Hence a run resumed at step ``s`` (``start_step=s``) sees exactly the batches the original run saw,
whatever the number of workers.

Data parallelism (``torchrun``): ``data.batch_source`` / ``data.batch_target`` are *global* batch
sizes. The global batch of step ``s`` is the same function of ``(seed, s)`` whatever the number of
processes; rank ``r`` of ``W`` loads items ``r, r+W, r+2W, ...`` of it (``rank``/``world_size`` of
:class:`StepBatchSampler`), so the union of the ranks' batches is exactly the one-process batch and
its order is recoverable (item ``j`` lives on rank ``j mod W`` at row ``j // W``). Both batch sizes
must be divisible by ``W`` (:func:`check_global_batch`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from balda.data.datasets import SegDataset, build_dataset
from balda.data.sampling import RareClassSampler
from balda.data.stats import class_pixel_counts
from balda.data.transforms import TrainTransform

log = logging.getLogger("balda.data")

SOURCE_STREAM = 0
TARGET_STREAM = 1
#: Crop area at which ``data.rcs.min_crop_pixels`` is specified (DAFormer: 3000 pixels of 512x512).
RCS_REFERENCE_AREA = 512 * 512
#: Extra entropy word separating the per-item transform seed from the RCS draw of the same item.
_SAMPLE_SEED_TAG = 0x5EED

LabelFilter = Callable[[int, np.ndarray], np.ndarray]


def sample_seed(seed: int, stream: int, step: int, j: int) -> int:
    """The transform seed of item ``j`` of batch ``step`` in ``stream`` (a 63-bit int)."""
    ss = np.random.SeedSequence([seed, stream, step, j, _SAMPLE_SEED_TAG])
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))


def _worker_init(worker_id: int) -> None:
    """Keep OpenCV single-threaded inside loader workers (no oversubscription of the CPU)."""
    import cv2

    cv2.setNumThreads(1)


def start_workers(loader: DataLoader) -> Iterator:
    """``iter(loader)``, with OpenCV's thread pool shut down in this process while the workers fork.

    OpenCV's pthreads pool is not fork-safe: a worker forked while the parent's pool threads wait on
    their condition variable inherits the variable with waiters that do not exist in the child, and
    its first pool call (``cv2.setNumThreads`` in :func:`_worker_init`) blocks forever in
    ``pthread_cond_destroy``. Measured with ``OMP_NUM_THREADS=1`` (torchrun's default with several
    processes per node): a parent that had resized an image with OpenCV before starting its workers
    hung at the first batch, with no error (2 workers, and a recipe check with 4 + 4). Setting the
    parent's pool to one thread joins its threads before the fork (the workers are started inside
    ``iter``); the old count is restored after.
    """
    if loader.num_workers == 0:
        return iter(loader)
    import cv2

    n = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        return iter(loader)
    finally:
        cv2.setNumThreads(n)


class TrainView(Dataset):
    """Torch dataset over keys ``(index, sample_seed, required_class or -1[, min_class_pixels])``.

    ``__getitem__`` loads item ``index`` (or, with ``on_error='skip'``, the next readable one), lets
    ``label_filter(index, label)`` mask the label (active learning: keep acquired pixels only), then
    applies ``transform(image, label, default_rng(sample_seed), required_class, min_class_pixels)``.
    Returns ``dict(image=FloatTensor (3,h,w), label=LongTensor (h,w), index=LongTensor ())`` where
    ``index`` is the item actually used. A plain int key ``i`` means ``(i, i, -1)``.
    """

    def __init__(
        self,
        dataset: SegDataset,
        transform: TrainTransform,
        label_filter: Optional[LabelFilter] = None,
        on_error: str = "raise",
    ):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.dataset = dataset
        self.transform = transform
        self.label_filter = label_filter
        self.on_error = on_error

    def __len__(self) -> int:
        return len(self.dataset)

    @staticmethod
    def parse_key(key) -> tuple[int, int, int, int]:
        """``(index, sample_seed, required_class or -1, min_class_pixels)`` of a sampler key."""
        if isinstance(key, (int, np.integer)):
            key = (int(key), int(key), -1)
        if len(key) not in (3, 4):
            raise ValueError(f"TrainView key must be (index, sample_seed, required_class[, min_pixels]), got {key!r}")
        return int(key[0]), int(key[1]), int(key[2]), int(key[3]) if len(key) == 4 else 0

    def __getitem__(self, key) -> dict:
        index, seed, required, min_pixels = self.parse_key(key)
        if self.on_error == "skip":
            index, image, label = self.dataset.load_or_skip(index)
        else:
            image, label = self.dataset.load(index)
        if self.label_filter is not None and label is not None:
            label = self.label_filter(index, label)
        rng = np.random.default_rng(seed)
        img_t, lab_t, geom = self.transform(
            image,
            label,
            rng,
            required_class=None if required < 0 else required,
            min_class_pixels=min_pixels,
            return_geometry=True,
        )
        return {"image": img_t, "label": lab_t, "index": torch.tensor(index, dtype=torch.long), **geom}


class StepBatchSampler:
    """Infinite batch sampler whose batch ``s`` depends only on ``(seed, stream, s)``.

    Yields lists of keys for :class:`TrainView`: ``(index, sample_seed, -1)``, or with ``rcs``
    ``(index, sample_seed, class, min_crop_pixels)``. Iteration starts at ``start_step``.
    ``batch_size`` is the global batch size; with ``world_size > 1`` this sampler yields the share of
    rank ``rank``: items ``rank::world_size`` of the global batch (``batch_size // world_size`` keys).
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        stream: int,
        start_step: int = 0,
        rcs: Optional[RareClassSampler] = None,
        min_crop_pixels: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if n < 1:
            raise ValueError(f"StepBatchSampler needs a non-empty dataset (n={n})")
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        if seed < 0 or stream < 0 or start_step < 0:
            raise ValueError(f"seed, stream and start_step must be >= 0 (got {seed}, {stream}, {start_step})")
        if rcs is not None and len(rcs.counts) != n:
            raise ValueError(f"RCS statistics cover {len(rcs.counts)} images but the dataset has {n}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world size {world_size}")
        if batch_size % world_size:
            raise ValueError(f"global batch size {batch_size} is not divisible by the world size {world_size}")
        self.rank, self.world_size = int(rank), int(world_size)
        self.n, self.batch_size, self.seed, self.stream = int(n), int(batch_size), int(seed), int(stream)
        self.start_step = int(start_step)
        self.rcs = rcs
        self.min_crop_pixels = int(min_crop_pixels)
        self._perms: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        """``perm_e = default_rng([seed, stream, epoch]).permutation(n)`` (the last two are cached)."""
        perm = self._perms.get(epoch)
        if perm is None:
            perm = np.random.default_rng([self.seed, self.stream, epoch]).permutation(self.n)
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = perm
        return perm

    def batch_at(self, step: int) -> list[tuple]:
        """The keys of this rank's share of batch ``step`` (the whole batch on a single process)."""
        keys = []
        for j in range(self.rank, self.batch_size, self.world_size):
            s_seed = sample_seed(self.seed, self.stream, step, j)
            if self.rcs is not None:
                c, idx = self.rcs.sample(np.random.default_rng([self.seed, self.stream, step, j]))
                keys.append((idx, s_seed, c, self.min_crop_pixels))
            else:
                pos = step * self.batch_size + j
                idx = int(self.permutation(pos // self.n)[pos % self.n])
                keys.append((idx, s_seed, -1))
        return keys

    def __iter__(self) -> Iterator[list[tuple]]:
        step = self.start_step
        while True:
            yield self.batch_at(step)
            step += 1


class UDALoader:
    """Endless iterator of ``{'source': batch, 'target': batch}``; ``.step`` = index of the next batch.

    Each stream is a torch ``DataLoader`` over a :class:`TrainView` driven by a
    :class:`StepBatchSampler` (stream 0 = source, optionally with RCS; stream 1 = target), with
    ``num_workers`` workers each. A batch is a dict of stacked tensors (``image`` (B,3,h,w),
    ``label`` (B,h,w), ``index`` (B,)). ``target_view=None`` yields source-only batches.
    ``batch_source``/``batch_target`` are global sizes; rank ``rank`` of ``world_size`` gets items
    ``rank::world_size`` of every global batch.
    """

    def __init__(
        self,
        source_view: TrainView,
        target_view: Optional[TrainView],
        batch_source: int,
        batch_target: int,
        seed: int,
        start_step: int = 0,
        num_workers: int = 0,
        rcs: Optional[RareClassSampler] = None,
        min_crop_pixels: int = 0,
        rank: int = 0,
        world_size: int = 1,
        collate: Optional[Callable] = None,
    ):
        self.collate = collate
        self.source_view, self.target_view = source_view, target_view
        self.batch_source, self.batch_target = int(batch_source), int(batch_target)
        self.seed = int(seed)
        self.num_workers = int(num_workers)
        self.rcs = rcs
        self.min_crop_pixels = int(min_crop_pixels)
        self.step = int(start_step)
        self.rank, self.world_size = int(rank), int(world_size)
        self._iters: Optional[dict] = None
        # validate eagerly (bad sizes / seeds should fail at construction, not at the first batch)
        self._sampler(SOURCE_STREAM)
        if target_view is not None:
            self._sampler(TARGET_STREAM)

    def _sampler(self, stream: int) -> StepBatchSampler:
        if stream == SOURCE_STREAM:
            return StepBatchSampler(
                len(self.source_view),
                self.batch_source,
                self.seed,
                SOURCE_STREAM,
                self.step,
                self.rcs,
                self.min_crop_pixels,
                rank=self.rank,
                world_size=self.world_size,
            )
        return StepBatchSampler(
            len(self.target_view),
            self.batch_target,
            self.seed,
            TARGET_STREAM,
            self.step,
            rank=self.rank,
            world_size=self.world_size,
        )

    def _loader(self, view: TrainView, sampler: StepBatchSampler) -> DataLoader:
        kw = {}
        if self.num_workers > 0:
            kw = dict(prefetch_factor=2, persistent_workers=False, worker_init_fn=_worker_init)
        if self.collate is not None:
            kw["collate_fn"] = self.collate
        return DataLoader(
            view, batch_sampler=sampler, num_workers=self.num_workers, pin_memory=torch.cuda.is_available(), **kw
        )

    def _start(self) -> dict:
        its = {"source": start_workers(self._loader(self.source_view, self._sampler(SOURCE_STREAM)))}
        if self.target_view is not None:
            its["target"] = start_workers(self._loader(self.target_view, self._sampler(TARGET_STREAM)))
        return its

    def __iter__(self) -> UDALoader:
        return self

    def __next__(self) -> dict:
        if self._iters is None:
            self._iters = self._start()
        batch = {name: next(it) for name, it in self._iters.items()}
        self.step += 1
        return batch

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state['step']`` (restarts the worker iterators)."""
        self.close()
        self.step = int(state["step"])

    def close(self) -> None:
        """Shut down worker processes; the next ``next()`` restarts at ``self.step``."""
        self._iters = None


def rcs_min_crop_pixels(min_crop_pixels: int, crop) -> int:
    """``min_crop_pixels`` (given for a 512x512 crop) scaled to the area of ``crop`` ([h, w] or None)."""
    if crop is None:
        return int(min_crop_pixels)
    return int(round(min_crop_pixels * crop[0] * crop[1] / RCS_REFERENCE_AREA))


def check_global_batch(cfg, world_size: int) -> None:
    """Raise :class:`~balda.config.ConfigError` unless ``data.batch_source`` and ``data.batch_target``
    (global batch sizes) are divisible by ``world_size`` (the number of training processes)."""
    from balda.config import ConfigError

    d = getattr(cfg, "data", cfg)
    for key in ("batch_source", "batch_target"):
        b = int(getattr(d, key))
        if b < world_size or b % world_size:
            raise ConfigError(
                f"'data.{key}' = {b} is the global batch size and must be a multiple of the "
                f"number of processes ({world_size}): each rank takes items rank::{world_size} "
                f"of every batch"
            )


def check_world_batch(cfg) -> None:
    """:func:`check_global_batch` for the current process group (nothing to check in one process);
    called before any dataset is read, so a bad batch size fails at once."""
    from balda.core import dist

    if dist.world_size() > 1:
        check_global_batch(cfg, dist.world_size())


def uda_loader(
    cfg,
    src_view: Dataset,
    tgt_view: Dataset,
    start_step: int = 0,
    rcs: Optional[RareClassSampler] = None,
    min_crop_pixels: int = 0,
    collate: Optional[Callable] = None,
) -> UDALoader:
    """The :class:`UDALoader` of ``cfg`` over two training views: batch sizes, workers and seed from
    ``cfg.data`` / ``cfg.train``, this process's rank and world size from :mod:`balda.core.dist`
    (``collate``: DataLoader's default when None). The one place the semantic, panoptic and
    classification train loaders are assembled."""
    from balda.core import dist

    d = cfg.data
    return UDALoader(
        src_view,
        tgt_view,
        d.batch_source,
        d.batch_target,
        seed=cfg.train.seed,
        start_step=start_step,
        num_workers=d.num_workers,
        rcs=rcs,
        min_crop_pixels=min_crop_pixels,
        rank=dist.rank(),
        world_size=dist.world_size(),
        collate=collate,
    )


def build_rcs(cfg, source: SegDataset) -> tuple[Optional[RareClassSampler], int]:
    """``(sampler, min_crop_pixels)`` of rare class sampling on ``source`` when ``cfg.data.rcs.enabled``
    (class statistics from :func:`class_pixel_counts`, cached; ``min_crop_pixels`` scaled to the
    crop area), else ``(None, 0)``."""
    from balda.core import dist

    d = cfg.data
    if not d.rcs.enabled:
        return None, 0
    counts = dist.main_first(
        lambda: class_pixel_counts(  # rank 0 fills the cache, the others read it
            source, num_classes=cfg.model.num_classes, progress=cfg.train.progress and dist.is_main()
        )
    )
    rcs = RareClassSampler(counts, temperature=d.rcs.temperature, min_pixels=d.rcs.min_pixels)
    min_crop = rcs_min_crop_pixels(d.rcs.min_crop_pixels, d.crop)
    log.info("%r; crops need >= %d pixels of the sampled class", rcs, min_crop)
    return rcs, min_crop


def build_train_loader(
    cfg, start_step: int = 0, target_label_filter: Optional[LabelFilter] = None, with_target_labels: bool = False
) -> UDALoader:
    """The training loader of a :class:`balda.config.Config`.

    Source and target datasets come from ``cfg.data``; the target is read with labels only when
    ``with_target_labels`` (oracle, active learning), whatever ``cfg.data.target.labelled`` says.
    ``target_label_filter(index, label)`` masks target labels before the transforms (giving one
    implies ``with_target_labels``).
    With ``cfg.data.rcs.enabled`` the source is drawn by :class:`RareClassSampler` over
    :func:`class_pixel_counts` of the source (cached), and a crop must hold
    ``rcs.min_crop_pixels`` (scaled from 512x512 to the crop area) of the sampled class.
    """
    d = cfg.data
    check_world_batch(cfg)
    if target_label_filter is not None:
        with_target_labels = True  # the filter masks target labels, so they must be read
    source = build_dataset(d.source)
    tcfg = dataclasses.replace(d.target, labelled=bool(with_target_labels))
    target = build_dataset(tcfg)
    rcs, min_crop = build_rcs(cfg, source)
    src_view = TrainView(source, TrainTransform.from_config(d, d.source), on_error=d.source.on_error)
    tgt_view = TrainView(
        target, TrainTransform.from_config(d, tcfg), label_filter=target_label_filter, on_error=tcfg.on_error
    )
    return uda_loader(cfg, src_view, tgt_view, start_step, rcs, min_crop)


__all__ = [
    "TrainView",
    "StepBatchSampler",
    "UDALoader",
    "build_train_loader",
    "build_rcs",
    "sample_seed",
    "rcs_min_crop_pixels",
    "check_global_batch",
    "check_world_batch",
    "uda_loader",
    "SOURCE_STREAM",
    "TARGET_STREAM",
]
