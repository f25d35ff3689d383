"""Thin helpers over ``torch.distributed`` for runs launched with ``torchrun``.

balda never implements its own multi-process engine: under ``torchrun`` the process group is
initialised from the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``), the
segmentor is wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`, each rank draws its
own share of every step's batch, and only rank 0 writes files.

Data-parallel contract (what makes N processes train exactly like one)
--------------------------------------------------------------------
* **Global batch.** ``data.batch_source`` / ``data.batch_target`` are *global* batch sizes. The
  global batch of step ``s`` is the same function of ``(seed, s)`` whatever the world size; rank
  ``r`` of ``W`` holds items ``r, r+W, r+2W, ...`` of it (:mod:`balda.data.loaders`). Both sizes
  must be divisible by ``W``.
* **Sharded step.** The trainer runs each training step inside :func:`sharded_step`. There, and
  only there (so evaluation or acquisition code that runs on rank 0 alone never blocks on a
  collective):

  - pixel-mean losses are normalised by the *global* count (:func:`global_mean`): a rank's loss is
    ``sum_local * W / count_global``, so DDP's gradient average equals the one-process gradient;
  - batch statistics (GBW's per-class sums) are all-reduced before they are used;
  - per-item randomness of batch augmentations is drawn for the whole global batch and each rank
    keeps its rows (:func:`shard_rows`), so image ``j`` of the global batch gets the same ClassMix
    classes, jitter and blur as in one process;
  - the non-finite-loss check is agreed by all ranks (:func:`all_true`), so every rank skips the
    same steps.
* **Gradients.** The segmentor's gradients are averaged by DDP (sum combiner), or by
  :class:`~balda.balancing.combine.HarmonizingCombiner` itself (gradient harmonization calls
  ``torch.autograd.grad``, which DDP's reducer never sees: the trainer runs such steps under
  ``no_sync()`` and the combiner averages the two group gradients before measuring their
  conflict). Parameters outside DDP (CPSL prototypes) and the discriminator (own optimiser) are
  averaged with :func:`all_reduce_grads`.
* **Buffers.** BatchNorm running statistics are per-rank batch statistics unless
  ``model.sync_bn=true`` (CUDA only: ``SyncBatchNorm`` does not run on CPU tensors). After every
  optimiser step the trainer broadcasts the model's buffers from rank 0
  (:func:`broadcast_buffers`), so every rank, the EMA teacher and rank 0's checkpoint agree.
* **Files.** Only rank 0 writes (checkpoints, logs, plots, metrics); rank 0 evaluates while the
  others wait at a barrier. Every rank resumes from the same checkpoint (on a shared file system
  for several nodes).

Pixel-mean losses other than the cross-entropy (negative learning, local consistency, feature
distance, CPSL's RCE and prototype consistency) go through
:func:`balda.methods.losses.masked_mean`, i.e. :func:`global_mean`, too.

Equal to one process up to float rounding: source-only/oracle, MinEnt, AdvEnt/AdaptSegNet,
self-training (ClassMix, jitter, blur, EMA teacher), GBW and every harmonizing combiner, given
batch-independent normalisation (no BatchNorm in train mode, or ``sync_bn`` on CUDA).
Not bit-identical, by design or limitation:

* plain BatchNorm in train mode normalises with per-rank statistics (``model.sync_bn=true`` on
  CUDA fixes it; on CPU freeze BN, e.g. ``model.freeze_bn=true`` for the backbone);
* CPSL's Sinkhorn assignments and memory banks use each rank's own samples (the prototypes, their
  gradients and EMA stay identical on every rank);
* dropout (DAFormer head): all ranks share one identically seeded RNG stream, so they draw the same
  masks for different images -- equal in distribution, not bitwise. Resume stays exact: every
  rank's RNG state equals rank 0's, which the checkpoint stores;
* training scalars logged by rank 0 are computed on its share of the batch (evaluation metrics
  are computed by rank 0 on the whole validation set).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator

import torch
import torch.distributed as torch_dist

#: Elements per coalesced all-reduce of :func:`all_reduce_mean_` (32 Mi float32 = 128 MiB).
_BUCKET_NUMEL = 32 * 1024 * 1024

_SHARDED = False


def is_distributed() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized() and torch_dist.get_world_size() > 1


def rank() -> int:
    return torch_dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return torch_dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    return rank() == 0


def init_from_env(backend: str | None = None) -> bool:
    """Initialise the default process group when launched by ``torchrun``; returns True if so."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return False
    if not torch_dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(local_rank())
        torch_dist.init_process_group(backend=backend)
    return True


def shutdown() -> None:
    """Destroy the default process group if this process initialised one (end of ``balda train``)."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        torch_dist.barrier()


def main_first(fn):
    """``fn()`` on every rank, rank 0 first: the others wait until rank 0 is done (e.g. has filled an
    on-disk cache that they then read instead of recomputing and rewriting it). Rank 0 reaches the
    barrier even if ``fn`` raises, so the others never hang (they will usually raise the same)."""
    if not is_distributed():
        return fn()
    if is_main():
        try:
            return fn()
        finally:
            barrier()
    barrier()
    return fn()


# ------------------------------------------------------------------------------------ sharded step
@contextlib.contextmanager
def sharded_step() -> Iterator[None]:
    """Mark a training step whose batch is this rank's share of the global batch (module docstring).

    A no-op flag on a single process; nests."""
    global _SHARDED
    prev = _SHARDED
    _SHARDED = is_distributed()
    try:
        yield
    finally:
        _SHARDED = prev


def in_sharded_step() -> bool:
    """True inside :func:`sharded_step` of a multi-process run (a plain flag: no communication)."""
    return _SHARDED


def global_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``total / count`` normalised over the global batch.

    Outside a sharded step: ``total / max(count, 1)``. Inside: ``total * W / max(sum_r count_r, 1)``
    (one all-reduce of the detached count), so that the average over ranks of the per-rank
    gradients is the gradient of the one-process mean over the global batch."""
    if not _SHARDED:
        return total / count.clamp_min(1)
    n = all_reduce_sum(count.detach())
    return total * world_size() / n.clamp_min(1)


def shard_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows ``rank::W`` of ``x`` inside a sharded step (``x`` drawn for the global batch), else ``x``."""
    if not _SHARDED:
        return x
    return x[rank() :: world_size()]


def global_rows(local_rows: int) -> int:
    """The global batch size of a per-rank batch of ``local_rows`` items (``local_rows * W`` inside a
    sharded step)."""
    return local_rows * world_size() if _SHARDED else local_rows


def all_true(flag: torch.Tensor) -> torch.Tensor:
    """Logical AND over ranks of a boolean scalar (identity outside a sharded step)."""
    if not _SHARDED:
        return flag
    t = flag.detach().to(torch.int32).reshape(1).clone()
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MIN)
    return t.reshape(flag.shape).bool()


# -------------------------------------------------------------------------------------- reductions
def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over ranks (in place on a copy); identity on a single process."""
    if not is_distributed():
        return t
    t = t.clone()
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.SUM)
    return t / world_size()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return t
    t = t.clone()
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.SUM)
    return t


def all_reduce_mean_(tensors: Iterable[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """Average each tensor over ranks, in place where possible, with few collectives.

    Returns the list of averaged tensors: the inputs themselves, except that an input whose memory
    overlaps itself (e.g. an expanded gradient returned by ``autograd.grad``) is replaced by a
    dense copy. ``None`` entries are kept (every rank must have ``None`` at the same positions).
    Tensors are grouped by (device, dtype) and flattened into buckets of at most ``_BUCKET_NUMEL``
    elements, each summed with one ``all_reduce`` and divided by the world size. Identity on a
    single process."""
    out = list(tensors)
    if not is_distributed():
        return out
    for i, t in enumerate(out):
        if t is not None and not (t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)):
            out[i] = t.contiguous()
    ts = [t for t in out if t is not None]
    w = world_size()
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in ts:
        groups.setdefault((t.device, t.dtype), []).append(t)
    for group in groups.values():
        start = 0
        while start < len(group):
            end, numel = start + 1, group[start].numel()
            while end < len(group) and numel + group[end].numel() <= _BUCKET_NUMEL:
                numel += group[end].numel()
                end += 1
            _all_reduce_bucket(group[start:end], w)
            start = end
    return out


def _all_reduce_bucket(bucket: list[torch.Tensor], w: int) -> None:
    if len(bucket) == 1 and bucket[0].is_contiguous():
        torch_dist.all_reduce(bucket[0], op=torch_dist.ReduceOp.SUM)
        bucket[0].div_(w)
        return
    flat = torch.cat([b.reshape(-1) for b in bucket])
    torch_dist.all_reduce(flat, op=torch_dist.ReduceOp.SUM)
    flat.div_(w)
    offset = 0
    for b in bucket:
        b.copy_(flat[offset : offset + b.numel()].view_as(b))
        offset += b.numel()


def all_reduce_grads(params: Iterable[torch.Tensor]) -> None:
    """Average ``p.grad`` over ranks for every parameter that has one (coalesced; see
    :func:`all_reduce_mean_`). Used for parameters outside DDP: the adversarial discriminator,
    strategy parameters such as CPSL prototypes, and every parameter under gradient harmonization."""
    params = list(params)
    grads = all_reduce_mean_([p.grad for p in params])
    for p, g in zip(params, grads):
        if g is not None and g is not p.grad:
            p.grad = g


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics, ...) to every rank (coalesced)."""
    if not is_distributed():
        return
    bufs = list(module.buffers())
    if not bufs:
        return
    groups: dict[tuple, list[torch.Tensor]] = {}
    for b in bufs:
        groups.setdefault((b.device, b.dtype), []).append(b)
    for group in groups.values():
        flat = torch.cat([b.reshape(-1) for b in group])
        torch_dist.broadcast(flat, src=src)
        offset = 0
        for b in group:
            b.copy_(flat[offset : offset + b.numel()].view_as(b))
            offset += b.numel()


def wrap_ddp(model: torch.nn.Module, device: torch.device):
    """Wrap ``model`` in DistributedDataParallel.

    * ``find_unused_parameters=True``: a strategy may leave a parameter without gradient in some
      step. Strategies call the segmentor several times per step (source, target, mixed image)
      and run one backward of the summed losses: DDP supports this because every forward runs the
      whole network (the unused-parameter search of the last forward then finds every parameter
      used, and each parameter's gradient is accumulated, hence reduced, exactly once).
    * ``forward_sync_buffers=False`` (``broadcast_buffers=False`` in older torch): instead of a
      broadcast at every forward (several per step), the trainer broadcasts rank 0's buffers once
      per step after the optimiser step (:func:`broadcast_buffers`), before the EMA teacher reads
      them.

    Parameters and buffers are broadcast from rank 0 when DDP is built."""
    import inspect

    ids = [device.index] if device.type == "cuda" else None
    ddp = torch.nn.parallel.DistributedDataParallel
    # newer torch renamed ``broadcast_buffers`` to ``forward_sync_buffers`` (buffers still synced at init)
    kw = (
        {"forward_sync_buffers": False}
        if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
        else {"broadcast_buffers": False}
    )
    return ddp(model, device_ids=ids, find_unused_parameters=True, **kw)


__all__ = [
    "is_distributed",
    "rank",
    "world_size",
    "local_rank",
    "is_main",
    "init_from_env",
    "shutdown",
    "barrier",
    "main_first",
    "sharded_step",
    "in_sharded_step",
    "global_mean",
    "shard_rows",
    "global_rows",
    "all_true",
    "all_reduce_mean",
    "all_reduce_sum",
    "all_reduce_mean_",
    "all_reduce_grads",
    "broadcast_buffers",
    "wrap_ddp",
]
