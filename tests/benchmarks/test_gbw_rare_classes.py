"""benchmarks/gbw_rare_classes.py: per-class GBW weights against each class's paired recall change, read
from a grid's per-run records (a synthetic grid with known numbers)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("balda_bench_gbw_rare", ROOT / "benchmarks" / "gbw_rare_classes.py")
gbw_rare = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(gbw_rare)


def _run(grid: Path, method: str, seed: int, recall: dict[str, float], weights: list[dict] | None = None):
    from balda.data.labels import CLASS_NAMES
    from balda.experiments.catalog import Cell

    d = grid / Cell(method, seed).name
    d.mkdir(parents=True)
    pc = {c: {"recall": recall.get(c, 0.5), "iou": recall.get(c, 0.5) / 2} for c in CLASS_NAMES}
    final = {"per_class": pc, "rare_classes": ["bus", "rider"]}
    (d / "final_metrics.json").write_text(json.dumps(final))
    lines = [
        {"step": 20 * (i + 1), **{f"weights/source/{c}": w for c, w in ws.items()}}
        for i, ws in enumerate(weights or [])
    ]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_weights_and_paired_recall_changes_per_class(tmp_path):
    nan = float("nan")
    for s, drop in enumerate((0.10, 0.20)):
        _run(tmp_path, "source_only", s, {"bus": 0.5})
        # bus down-weighted and losing recall; sky absent at the second logged step (NaN, not averaged)
        ws = [{"bus": 0.6, "sky": 1.5}, {"bus": 0.8, "sky": nan}]
        _run(tmp_path, "source_only+gbw", s, {"bus": 0.5 - drop, "sky": 0.6}, ws)
    text = gbw_rare.report(tmp_path)
    assert "### source_only+gbw against source_only (2 seeds: 0, 1)" in text
    bus = next(line for line in text.splitlines() if line.startswith("| **bus** (rare)"))
    # weight mean of 0.6 and 0.8; recall change -10 and -20 points: mean -15, t(1) half-width 12.706 * 7.07 / 1.414
    assert bus.startswith("| **bus** (rare) | 0.700 | - | -15.0 [-78.5, +48.5] |") and bus.endswith("| 2/2 |")
    sky = next(line for line in text.splitlines() if line.startswith("| sky |"))
    assert sky.startswith("| sky | 1.500 | - | +10.0 [+10.0, +10.0] * |") and sky.endswith("| 0/2 |")
    # rows go by the source weight: bus (0.7) before sky (1.5)
    assert text.index("**bus**") < text.index("| sky |")
    assert "self_training" not in text  # pairs without runs are left out


def test_a_grid_without_gbw_runs_is_an_error(tmp_path):
    from balda.core.errors import ConfigError

    with pytest.raises(ConfigError, match="no finished GBW run"):
        gbw_rare.report(tmp_path)
    assert gbw_rare.main(["--grid", str(tmp_path), "--markdown", str(tmp_path / "x.md")]) == 2
