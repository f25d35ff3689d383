"""The classification grid summary: accuracy mean +- std, paired differences, conflict statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from balda.experiments.catalog import Cell
from balda.experiments.summary import summarize


def _run(out, method, seed, acc, per_class, conflict=None):
    d = out / Cell(method, seed).name
    d.mkdir(parents=True)
    m = {
        "accuracy": acc,
        "mean_class_accuracy": float(np.mean(per_class)),
        "per_class": {str(i): a for i, a in enumerate(per_class)},
        "confusion": np.eye(len(per_class), dtype=int).tolist(),
    }
    (d / "final_metrics.json").write_text(json.dumps(m))
    recs = [{"step": 10, "kind": "train", "loss/source.ce": 1.0}]
    if conflict is not None:
        recs[0].update({"gh/conflict": conflict, "gh/angle": 80 + 20 * conflict})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_summary_of_a_classification_grid(tmp_path):
    for s, (a, b) in enumerate([(0.30, 0.40), (0.20, 0.35), (0.25, 0.50)]):
        _run(tmp_path, "digits/dann", s, a, [a, 1.0])
        _run(tmp_path, "digits/dann+gh", s, b, [b, 0.5], conflict=0.5)
    out = summarize(tmp_path, ["digits/dann", "digits/dann+gh"], [0, 1, 2])
    t = out["table"]["digits/dann+gh"]
    assert t["accuracy"][0] == pytest.approx(100 * np.mean([0.40, 0.35, 0.50]))
    assert t["accuracy"][1] == pytest.approx(100 * np.std([0.40, 0.35, 0.50], ddof=1))
    assert t["min_class_accuracy"][0] == pytest.approx(100 * np.mean([0.40, 0.35, 0.50]))
    assert t["gh_conflict"][0] == pytest.approx(50.0) and t["gh_angle"][0] == pytest.approx(90.0)
    (row,) = out["paired"]
    d = 100 * (np.array([0.40, 0.35, 0.50]) - np.array([0.30, 0.20, 0.25]))
    half = 4.303 * d.std(ddof=1) / np.sqrt(3)
    assert row["control"] == "digits/dann" and row["accuracy"][0] == pytest.approx(d.mean())
    assert row["accuracy"][1] == pytest.approx(half)
    md = (tmp_path / "summary.md").read_text()
    assert "| digits/dann+gh | 3 |" in md and "steps in conflict" in md and "Δ accuracy" in md
    assert (tmp_path / "accuracy.png").is_file() and json.loads((tmp_path / "summary.json").read_text())["paired"]
