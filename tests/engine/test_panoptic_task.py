"""The panoptic task end to end on a tiny SYNTHIA-format street benchmark with instance ids: every
panoptic recipe trains, evaluates by mPQ, resumes bit-identically and exports COCO-panoptic files;
malformed instance maps fail naming the file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from balda.config import to_dict
from balda.engine.trainer import Trainer
from tests.conftest import tiny_overrides


@pytest.fixture(scope="module")
def tiny_synthia(tmp_path_factory):
    from balda.data.streets import generate_streets

    out = tmp_path_factory.mktemp("streets_synthia")
    generate_streets(
        out,
        size=(32, 64),
        n_source=6,
        n_target_train=4,
        n_target_val=3,
        seed=0,
        progress=False,
        source_format="synthia",
    )
    return out


def _cfg(data, out, config, *extra, name="run", iters=4):
    from balda.config import load_config, resolve_config

    # the tiny run of every test (batch 2+2 is the panoptic recipes' own), with small panoptic heads
    over = [*tiny_overrides(data, out, name, iters), "panoptic.head_channels=8", *extra]
    return load_config(resolve_config(config), over)


GBW = ("balancing.class_weights=gbw", "balancing.gbw.mode=scale_free")


@pytest.mark.parametrize(
    "config,extra",
    [
        ("streets_panoptic/source_only", ()),
        ("streets_panoptic/oracle", ()),
        ("streets_panoptic/self_training", ()),
        ("streets_panoptic/source_only", GBW),
        ("streets_panoptic/self_training", GBW),
    ],
    ids=["source_only", "oracle", "self_training", "source_only+gbw", "self_training+gbw"],
)
def test_panoptic_recipes_train_and_report_mpq(tiny_synthia, tmp_path, config, extra):
    cfg = _cfg(tiny_synthia, tmp_path, config, *extra)
    assert cfg.task == "panoptic"
    metrics = Trainer(cfg).fit()
    run = cfg.run_dir
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["step"] == 4
    for key in ("mpq", "msq", "mrq", "mpq_things", "mpq_stuff", "miou"):
        assert 0.0 <= final[key] <= 1.0, key
    assert abs(final["mpq"] - metrics.score) < 1e-12
    assert (run / "plots" / "class_pq.png").is_file()
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if x.get("kind") == "train"]
    assert train and all(np.isfinite(v) for x in train for k, v in x.items() if k.startswith("loss"))
    names = set().union(*(x.keys() for x in train))
    assert any("center" in k for k in names) and any("offset" in k for k in names), names
    if extra:  # GBW weights the semantic CE: its weights are logged
        assert any(k.startswith("weights/") or "weight" in k for k in names), names


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def test_panoptic_self_training_resumes_bit_identically(tiny_synthia, tmp_path):
    """SIGKILLed after step 3 (last checkpoint: step 2), the resumed run ends with the weights of the
    uninterrupted one: teacher, pseudo instances and ClassMix draws are step-deterministic."""
    import os
    import subprocess
    import sys

    cfg = _cfg(tiny_synthia, tmp_path, "streets_panoptic/self_training")
    (tmp_path / "cfg.yaml").write_text(json.dumps(to_dict(cfg)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(name, extra_env=None, resume=False):
        cmd = [sys.executable, "-m", "balda.cli", "train", str(tmp_path / "cfg.yaml"), f"name={name}"]
        cmd += ["--resume"] if resume else []
        return subprocess.run(cmd, env={**env, **(extra_env or {})}, capture_output=True, text=True, timeout=300)

    ref = run("ref")
    assert ref.returncode == 0, ref.stderr[-2000:]
    assert run("killed", {"BALDA_FAULT_KILL_AT_STEP": "3"}).returncode == -9
    resumed = run("killed", resume=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = _weights(tmp_path / "ref" / "final.pt"), _weights(tmp_path / "killed" / "final.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_panoptic_eval_exports_coco_panoptic_files(tiny_synthia, tmp_path):
    from balda.core.registry import TASKS
    from balda.engine.panoptic_task import evaluate_panoptic

    cfg = _cfg(tiny_synthia, tmp_path, "streets_panoptic/source_only", iters=1)
    task = TASKS.get(cfg.task)
    model = task.build_model(cfg)
    val = task.build_dataset(cfg.data.val, cfg)
    out = tmp_path / "export"
    metrics = evaluate_panoptic(model, val, cfg, "cpu", progress=False, export_dir=out)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["num_images"] == len(val) and abs(saved["mpq"] - metrics.score) < 1e-12
    jsons = sorted(p.name for p in out.rglob("*.json") if p.name != "metrics.json")
    assert jsons, list(out.rglob("*"))
    pngs = list(out.rglob("*.png"))
    assert len(pngs) >= len(val)


def test_a_malformed_instance_map_names_the_file(tiny_synthia, tmp_path):
    import shutil

    from balda.core.errors import DataError
    from balda.data.panoptic_datasets import build_panoptic_dataset

    data = tmp_path / "data"
    shutil.copytree(tiny_synthia / "target", data / "target")
    cfg = _cfg(data, tmp_path, "streets_panoptic/oracle", iters=1)
    inst = sorted((data / "target" / "gtFine" / "val").rglob("*_gtFine_instanceIds.png"))[0]
    Image.fromarray(np.zeros((5, 7), np.uint16)).save(inst)
    ds = build_panoptic_dataset(cfg.data.val)
    with pytest.raises(DataError, match=inst.name):
        for i in range(len(ds)):
            ds.load_panoptic(i)
