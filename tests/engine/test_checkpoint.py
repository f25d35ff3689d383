import os
import random

import numpy as np
import pytest
import torch

from balda.core.checkpoint import (
    CheckpointError,
    atomic_save,
    load_checkpoint,
    load_model_weights,
    rng_state,
    set_rng_state,
)


def test_atomic_save_roundtrip_and_no_temp_left(tmp_path):
    p = atomic_save({"model": {"w": torch.ones(2)}, "step": 3}, tmp_path / "a" / "last.pt")
    assert load_checkpoint(p)["step"] == 3
    assert os.listdir(tmp_path / "a") == ["last.pt"]


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    p = atomic_save({"model": {}, "step": 1}, tmp_path / "last.pt")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        atomic_save({"model": {}, "step": 2}, p)
    monkeypatch.undo()
    assert load_checkpoint(p)["step"] == 1
    assert os.listdir(tmp_path) == ["last.pt"]


def test_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_checkpoint(bad)
    m = torch.nn.Linear(2, 3)
    with pytest.raises(CheckpointError, match="other.pt.*shape"):
        load_model_weights(m, torch.nn.Linear(2, 4).state_dict(), "other.pt")
    with pytest.raises(CheckpointError, match="missing"):
        load_model_weights(m, {"weight": m.weight.detach()}, "x.pt")


def test_rng_state_roundtrip():
    s = rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(s)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a
