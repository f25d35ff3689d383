"""Reliability: kills at several points resume to the exact weights, checkpoints that do not fit are
named, and bad input (broken files, odd labels, empty folders, wrong config) fails clearly or is
skipped with a logged warning where configured."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from balda.config import ConfigError
from balda.core.checkpoint import CheckpointError, load_checkpoint
from balda.data.io import DataError
from balda.engine.trainer import Trainer
from tests.conftest import tiny_overrides

ITERS = 5
#: adversarial (discriminator + its Adam state) with GBW EMA state: every kind of resumable state.
FAULT_RUN = ["streets/advent", "balancing.class_weights=gbw", "balancing.gbw.ema=0.5", "train.keep_ckpts=1"]


def _cli(data: Path, out: Path, name: str, env_extra=None, resume=False):
    cmd = [
        sys.executable,
        "-m",
        "balda.cli",
        "train",
        FAULT_RUN[0],
        *tiny_overrides(data, out, name, iters=ITERS),
        *FAULT_RUN[1:],
    ] + (["--resume"] if resume else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _step(path: Path) -> int:
    return int(load_checkpoint(path)["step"])


def _final_state(run: Path) -> dict:
    ck = torch.load(run / "final.pt", map_location="cpu", weights_only=False)
    return {
        **{f"model.{k}": v for k, v in ck["model"].items()},
        **{f"strategy.{k}": v for k, v in ck["strategy"].items() if isinstance(v, torch.Tensor)},
    }


@pytest.fixture(scope="module")
def reference_run(tiny_streets, tmp_path_factory):
    out = tmp_path_factory.mktemp("faults")
    res = _cli(tiny_streets, out, "ref")
    assert res.returncode == 0, res.stderr[-3000:]
    return out / "ref"


def test_kills_right_after_a_checkpoint_and_during_a_checkpoint_write(reference_run, tiny_streets):
    """One run killed twice (checkpoints every 2 steps; the kill between two checkpoints is
    tests/engine/test_trainer.py::test_resume_after_a_real_kill_matches_an_uninterrupted_run):

    1. right after step 2, i.e. just after writing last.pt at step 2;
    2. resumed, killed while writing last.pt at step 4, after the temporary file is complete and
       before the rename: last.pt must still be the loadable step-2 checkpoint and no partial file
       may be called last.pt;
    3. resumed to the end: bit-identical weights, strategy state (discriminator and its optimiser
       state, GBW EMA) and metrics to the uninterrupted run."""
    out = reference_run.parent
    run = out / "chain"

    r = _cli(tiny_streets, out, "chain", {"BALDA_FAULT_KILL_AT_STEP": "2"})
    assert r.returncode == -9, r.stderr[-2000:]
    assert _step(run / "last.pt") == 2 and not (run / "final.pt").exists()

    r = _cli(tiny_streets, out, "chain", {"BALDA_FAULT_KILL_IN_SAVE": "1"}, resume=True)  # 1st save: last.pt @4
    assert r.returncode == -9, r.stderr[-2000:]
    assert _step(run / "last.pt") == 2  # the previous checkpoint is intact and loadable
    orphans = list(run.glob(".last.pt.*.tmp"))
    assert len(orphans) == 1 and orphans[0].stat().st_size > 0
    assert sorted(p.name for p in run.glob("last.pt*")) == ["last.pt"]
    assert not (run / "iter_4.pt").exists()

    r = _cli(tiny_streets, out, "chain", resume=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not list(run.glob(".*.tmp")), "the orphaned temporary file is removed on resume"
    a, b = _final_state(reference_run), _final_state(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ma = load_checkpoint(reference_run / "final.pt")["best_miou"]
    assert ma == load_checkpoint(run / "final.pt")["best_miou"]
    assert (run / "final_metrics.json").read_text() == (reference_run / "final_metrics.json").read_text()


# ------------------------------------------------------------------------------------ checkpoints
def test_checkpoint_of_another_model_config_is_named(reference_run, tiny_config, capsys):
    ckpt = reference_run / "final.pt"
    cfg = tiny_config(FAULT_RUN[0], *FAULT_RUN[1:], "model.width=16", iters=ITERS)
    # resuming: the config comparison names the checkpoint and the differing key first
    with pytest.raises(ConfigError, match=re.escape(str(ckpt)) + r".*model\.width: 8 -> 16"):
        Trainer(cfg, resume=str(ckpt))
    # allowed anyway, the weights themselves do not fit: the checkpoint is named
    with pytest.raises(CheckpointError, match=re.escape(str(ckpt)) + ".*model config"):
        Trainer(cfg, resume=str(ckpt), allow_changes=["model", "name", "out_dir"])

    from balda.cli import main

    rc = main(["eval", str(ckpt), "model.width=16", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and str(ckpt) in err and "does not match the model" in err


def test_unreadable_and_missing_checkpoints_are_named(tiny_config, tmp_path):
    cfg = tiny_config("streets/source_only")
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    (cfg.run_dir / "last.pt").write_bytes(b"PK\x03\x04 not really a checkpoint")
    with pytest.raises(CheckpointError, match=r"last\.pt is unreadable"):
        Trainer(cfg, resume=True)
    with pytest.raises(CheckpointError, match="nope.pt"):
        Trainer(cfg, resume=str(tmp_path / "nope.pt"))


# -------------------------------------------------------------------------------------- bad input
@pytest.fixture
def streets_copy(tiny_streets, tmp_path):
    dst = tmp_path / "data"
    shutil.copytree(tiny_streets, dst)
    return dst


def _cfg(data: Path, out: Path, config="streets/source_only", *extra, iters=4):
    from balda.config import load_config, resolve_config

    return load_config(resolve_config(config), tiny_overrides(data, out, "run", iters) + list(extra))


def _train_cli(data: Path, out: Path, config="streets/source_only", *extra, iters=4):
    from balda.cli import main

    return main(["train", config, *tiny_overrides(data, out, "run", iters), *extra, "--no-progress"])


def test_corrupt_and_truncated_training_images(streets_copy, tmp_path, capsys, caplog):
    """4 steps x 2 images visit all 8 source images: a corrupt one stops the run naming the file
    (``on_error=raise``, the default), or is skipped with a warning (``data.source.on_error=skip``)."""
    images = sorted((streets_copy / "source" / "images").glob("*.png"))
    bad, cut = images[3], images[5]
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])

    assert _train_cli(streets_copy, tmp_path / "raise") == 1
    err = capsys.readouterr().err
    assert "balda: error:" in err and (str(bad) in err or str(cut) in err), err

    with caplog.at_level(logging.WARNING, logger="balda.data"):
        Trainer(
            _cfg(streets_copy, tmp_path / "skip", "streets/source_only", "data.source.on_error=skip"), progress=False
        ).fit()
    skipped = " ".join(r.getMessage() for r in caplog.records if "skipping unreadable" in r.getMessage())
    assert bad.stem in skipped and cut.stem in skipped
    assert (tmp_path / "skip" / "run" / "final.pt").is_file()


def _write_png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(arr).save(path)


def test_labels_with_unexpected_ids_or_sizes(streets_copy, tmp_path):
    gt = streets_copy / "target" / "gtFine" / "train"
    first = sorted(gt.glob("*/*_gtFine_labelIds.png"))[0]
    stem = first.name[: -len("_gtFine_labelIds.png")]
    h, w = 32, 64
    # labelTrainIds take precedence over labelIds; 40 is no trainId -> error naming the file
    trainids = first.with_name(f"{stem}_gtFine_labelTrainIds.png")
    _write_png(trainids, np.full((h, w), 40, np.uint8))
    with pytest.raises(DataError, match=re.escape(str(trainids)) + r".*\[40\].*outside 0\.\.18"):
        Trainer(_cfg(streets_copy, tmp_path / "ids", "streets/oracle", iters=4), progress=False).fit()
    # a target (Cityscapes) label of the wrong size -> error naming the label file
    _write_png(trainids, np.zeros((h // 2, w), np.uint8))
    with pytest.raises(DataError, match=re.escape(str(trainids)) + ".*size 64x16"):
        Trainer(_cfg(streets_copy, tmp_path / "size", "streets/oracle", iters=4), progress=False).fit()
    trainids.unlink()

    # GTA5 source labels: an unknown labelId (250) is an error naming the file; a half-size label of
    # the same shape (the real download's odd pairs) is resized with a warning; on_error=skip skips
    # the broken pair and trains on
    src = sorted((streets_copy / "source" / "labels").glob("*.png"))
    _write_png(src[0], np.full((h, w), 250, np.uint8))
    _write_png(src[1], np.full((h // 2, w // 2), 26, np.uint8))  # car, half size
    from balda.data.datasets import build_dataset

    cfg = _cfg(streets_copy, tmp_path / "gta")
    ds = build_dataset(cfg.data.source)
    with pytest.raises(DataError, match=re.escape(str(src[0])) + r".*\[250\]"):
        ds.load(0)
    _, lab1 = ds.load(1)
    assert lab1.shape == (h, w) and (lab1 == 13).all()
    with pytest.raises(DataError, match=re.escape(str(src[0]))):
        Trainer(cfg, progress=False).fit()
    Trainer(
        _cfg(streets_copy, tmp_path / "gta_skip", "streets/source_only", "data.source.on_error=skip"), progress=False
    ).fit()  # trains through the resized pair, skips the broken one


def test_unreadable_val_image_raises_or_is_skipped(streets_copy, tmp_path, caplog):
    """``data.val.on_error`` applies to evaluation: raise naming the file, or skip with a warning."""
    val = sorted((streets_copy / "target" / "leftImg8bit" / "val").rglob("*.png"))
    val[1].write_bytes(b"garbage")
    with pytest.raises(DataError, match=re.escape(str(val[1]))):
        Trainer(_cfg(streets_copy, tmp_path / "v1", iters=1), progress=False).fit()
    with caplog.at_level(logging.WARNING, logger="balda.eval"):
        m = Trainer(
            _cfg(streets_copy, tmp_path / "v2", "streets/source_only", "data.val.on_error=skip", iters=1),
            progress=False,
        ).fit()
    assert 0 <= m.miou <= 1 and "skipping unreadable item 1" in caplog.text


def test_empty_dataset_folders(streets_copy, tmp_path):
    for p in (streets_copy / "source" / "images").glob("*.png"):
        p.unlink()
    with pytest.raises(DataError, match=re.escape(str(streets_copy / "source" / "images")) + ".*no .png"):
        Trainer(_cfg(streets_copy, tmp_path), progress=False)
    shutil.rmtree(streets_copy / "target" / "leftImg8bit" / "val")
    (streets_copy / "target" / "leftImg8bit" / "val").mkdir()
    from balda.data.datasets import build_dataset

    with pytest.raises(DataError, match=r"leftImg8bit/val holds no"):
        build_dataset(_cfg(streets_copy, tmp_path).data.val)


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.iters=abc", "train.iters"),
        ("data.crop=5", "data.crop"),
        ("method.adversarial.lambda_advv=1", "method.adversarial.lambda_advv"),
        ("balancing.combiner=ghh", "balancing.combiner"),
        ("optim.lr=[1, 2]", "optim.lr"),
    ],
)
def test_wrong_config_keys_or_types_name_the_key(override, key, capsys):
    from balda.cli import main

    assert main(["train", "streets/advent", override]) == 2
    err = capsys.readouterr().err
    assert "config error" in err and key in err, err
    with pytest.raises(ConfigError, match=re.escape(key)):
        from balda.config import load_config, resolve_config

        load_config(resolve_config("streets/advent"), [override])
