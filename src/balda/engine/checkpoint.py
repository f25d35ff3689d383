"""Atomic checkpoints and exact RNG state capture.

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
from pathlib import Path
from typing import Any

import numpy as np
import torch

from balda.atomic import atomic_write


_KILL_IN_SAVE = int(os.environ.get("BALDA_FAULT_KILL_IN_SAVE", "-1"))
_saves = 0


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not match the model/config."""


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically (see :mod:`balda.atomic`)."""
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


def load_model_weights(model: torch.nn.Module, state: dict, source: str | Path) -> None:
    """Load a model state dict, raising :class:`CheckpointError` naming ``source`` on a mismatch."""
    from balda.models.weights import diff_state_dict

    diff = diff_state_dict(model.state_dict(), state)
    if diff:
        raise CheckpointError(f"checkpoint {source} does not match the model ({diff}); "
                              "was it trained with another model config?")
    model.load_state_dict(state)
