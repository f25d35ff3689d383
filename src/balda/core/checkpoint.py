"""Atomic checkpoints, run-folder resolution, state-dict comparison and exact RNG state capture.

A checkpoint is written to a temporary file in the destination folder, flushed and fsynced, then
moved over the destination with :func:`os.replace` (atomic on POSIX): a reader sees the old file
or the new one, never a half-written one, whatever moment a run is killed at.

Fault injection (tests): with ``BALDA_FAULT_KILL_IN_SAVE=N`` the process SIGKILLs itself during its
``N``-th :func:`atomic_save` call, after the temporary file is fully written and fsynced and before
the rename: the destination keeps its previous content and an orphan ``.<name>.*.tmp`` remains.
"""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from balda.core.atomic import atomic_write
from balda.core.errors import CheckpointError

_KILL_IN_SAVE = int(os.environ.get("BALDA_FAULT_KILL_IN_SAVE", "-1"))
_saves = 0
_SHOW = 5  # offending keys listed per category


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically (see :mod:`balda.core.atomic`)."""
    global _saves
    _saves += 1

    def die_if_asked():  # fault injection: die between the write and the rename
        if _saves == _KILL_IN_SAVE:
            os.kill(os.getpid(), signal.SIGKILL)

    return atomic_write(path, lambda f: torch.save(obj, f), before_rename=die_if_asked)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint, raising :class:`CheckpointError` naming the file when it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"checkpoint {path} is not a balda checkpoint (no 'model' entry)")
    return ckpt


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_checkpoint(path: str | Path, best: bool = False) -> Path:
    """The checkpoint meant by ``path``: the file itself, or in a run folder ``final.pt`` (``best.pt``
    with ``best=True``), else ``last.pt`` (a run still training). Raises :class:`CheckpointError`
    naming the folder when it holds none of them."""
    p = Path(path)
    if not p.is_dir():
        if not p.is_file():
            raise CheckpointError(f"checkpoint not found: {p}")
        return p
    for name in ("best.pt" if best else "final.pt", "last.pt"):
        if (p / name).is_file():
            return p / name
    raise CheckpointError(f"run folder {p} holds no {'best.pt' if best else 'final.pt'} and no last.pt")


def _fmt(keys: list[str]) -> str:
    more = f" ... (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


class StateDiff(NamedTuple):
    """Keys by which a state dict differs from a model's: what :func:`diff_state_dict` returns.

    Falsy when the two match; ``str()`` lists a few keys of each kind for an error message."""

    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]  # "key (file shape vs model shape)"

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing: {_fmt(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected: {_fmt(self.unexpected)}")
        if self.mismatched:
            parts.append(f"{len(self.mismatched)} shape mismatches: {_fmt(self.mismatched)}")
        return "; ".join(parts)


def diff_state_dict(
    own: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor], optional=lambda key: False
) -> StateDiff:
    """Compare ``other`` (a file's state dict) with ``own`` (the model's): keys of ``own`` absent from
    ``other`` (except those ``optional(key)`` allows to be absent), keys of ``other`` unknown to
    ``own``, and keys present in both with different shapes. The one place both the ImageNet-weights
    loader and the checkpoint loader check a state dict."""
    missing = [k for k in own if k not in other and not optional(k)]
    unexpected = [k for k in other if k not in own]
    mismatched = [
        f"{k} (file {tuple(other[k].shape)} vs model {tuple(own[k].shape)})"
        for k in own
        if k in other and tuple(other[k].shape) != tuple(own[k].shape)
    ]
    return StateDiff(missing, unexpected, mismatched)


def load_model_weights(model: torch.nn.Module, state: dict, source: str | Path) -> None:
    """Load a model state dict, raising :class:`CheckpointError` naming ``source`` on a mismatch."""
    diff = diff_state_dict(model.state_dict(), state)
    if diff:
        raise CheckpointError(
            f"checkpoint {source} does not match the model ({diff}); was it trained with another model config?"
        )
    model.load_state_dict(state)


#: The ``format`` of a file written by :func:`export_weights`.
EXPORT_FORMAT = "balda-weights-1"


def export_weights(run: str | Path, out: str | Path, best: bool = False) -> Path:
    """``balda export``: a run's model as a plain file ``torch.load`` opens with ``weights_only=True``.

    A training checkpoint also pickles the optimiser and the numpy RNG state (so loading it needs
    ``weights_only=False``); the export keeps only ``model`` (the state dict), ``model_config`` and
    ``config`` (plain dicts of the run's settings), ``step`` and ``format``. ``balda eval``,
    ``balda predict`` and ``model.init`` accept it like a checkpoint. Written atomically."""
    src = resolve_checkpoint(run, best=best)
    ckpt = load_checkpoint(src)
    for key in ("config", "model_config"):
        if not isinstance(ckpt.get(key), dict):
            raise CheckpointError(f"{src} holds no {key!r}; it was not written by balda train")
    state = {k: v.detach().cpu() for k, v in ckpt["model"].items()}
    payload = {
        "format": EXPORT_FORMAT,
        "model": state,
        "model_config": ckpt["model_config"],
        "config": ckpt["config"],
        "step": int(ckpt.get("step", 0)),
        "source": str(src),
    }
    return atomic_save(payload, out)
