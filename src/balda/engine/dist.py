"""Thin helpers over ``torch.distributed`` for runs launched with ``torchrun``.

balda never implements its own multi-process engine: under ``torchrun`` the process group is
initialised from the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``), the
segmentor is wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`, each rank draws its
own share of every step's batch, and only rank 0 writes files.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as torch_dist


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


def barrier() -> None:
    if is_distributed():
        torch_dist.barrier()


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


def all_reduce_grads(params) -> None:  # pragma: no cover - used only without DDP
    for p in params:
        if p.grad is not None:
            torch_dist.all_reduce(p.grad, op=torch_dist.ReduceOp.SUM)
            p.grad /= world_size()


def wrap_ddp(model: torch.nn.Module, device: torch.device):
    """Wrap ``model`` in DistributedDataParallel (find_unused_parameters for strategies whose
    losses do not touch every parameter)."""
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)
