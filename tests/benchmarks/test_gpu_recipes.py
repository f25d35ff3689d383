"""The GPU script (benchmarks/gpu_recipes.py) has never had a GPU: its ``--smoke`` mode runs every row's
code path on the CPU with small backbones, so a broken row fails here, not in a GPU's scarce minutes."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
_spec = importlib.util.spec_from_file_location("balda_bench_gpu", ROOT / "benchmarks" / "gpu_recipes.py")
gpu = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(gpu)


def test_smoke_runs_every_row_and_writes_the_section(tmp_path):
    md, out = tmp_path / "RESULTS.md", tmp_path / "gpu.json"
    md.write_text("# balda performance benchmarks\n\n## Paper models\n\nkept\n")
    torch.set_num_threads(1)
    assert gpu.main(["--smoke", "--device", "cpu", "--markdown", str(md), "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert list(rows) == [r[0] for r in gpu.ROWS]
    assert all(r["s_per_iter"] > 0 and r["peak_gb"] > 0 for r in rows.values())
    text = md.read_text()
    assert "## Paper models\n\nkept" in text and "## GPU" in text and "not a measurement" in text
    assert all(f"| {r[0]} |" in text for r in gpu.ROWS)


def test_refuses_to_measure_off_gpu(tmp_path, capsys):
    md = tmp_path / "RESULTS.md"
    assert gpu.main(["--device", "cpu", "--markdown", str(md)]) == 2
    assert "--smoke" in capsys.readouterr().err and not md.exists()
