"""The paper-model cost bench (benchmarks/bench_paper_models.py): steps run in alternating order, rows
of separate runs merge only within the same setting, and the peak-memory window resets."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
_spec = importlib.util.spec_from_file_location("balda_bench_pm", ROOT / "benchmarks" / "bench_paper_models.py")
bench = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(bench)
import run_all  # noqa: E402


class _Step:
    def __init__(self, name, log, seconds):
        self.name, self.log, self.seconds = name, log, seconds

    def __call__(self):
        self.log.append(self.name)
        return self.seconds


def test_interleaved_alternates_the_order_and_takes_the_median_ratio():
    log: list[str] = []
    r = bench.interleaved(_Step("a", log, 2.0), _Step("b", log, 3.0), pairs=4, warmup=1)
    assert log == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]
    assert r["ratio"] == 1.5 and r["ratio_q1"] == 1.5 and r["ratio_q3"] == 1.5 and r["pairs"] == 4


def test_rows_merge_only_in_the_same_setting(tmp_path):
    meta = {"device": "cpu (x86_64)", "threads": 1, "crop": 256, "batch": 1, "amp": "none", "commit": "a"}
    out = tmp_path / "pm.json"
    out.write_text(json.dumps({"meta": meta, "rows": {"r101 x": {"ratio": 1.0}}}))
    assert set(bench.merged_rows(out, {**meta, "commit": "b"}, {"r101 y": {"ratio": 2.0}})) == {"r101 x", "r101 y"}
    assert set(bench.merged_rows(out, {**meta, "crop": 512}, {"r101 y": {"ratio": 2.0}})) == {"r101 y"}
    assert set(bench.merged_rows(tmp_path / "missing.json", meta, {"r101 y": {}})) == {"r101 y"}


def test_peak_memory_window_resets():
    cpu = torch.device("cpu")
    big = torch.ones(64 * 2**20 // 4)  # 64 MB resident
    before = run_all.peak_memory_mb(cpu)
    del big
    run_all.reset_peak_memory(cpu)
    after = run_all.peak_memory_mb(cpu)
    if os.access("/proc/self/clear_refs", os.W_OK):
        assert after < before - 32
