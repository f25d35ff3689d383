"""The panoptic grid summary: mPQ / things / rare-thing PQ and RQ, paired by seed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from balda.data.labels import CLASS_NAMES
from balda.experiments.catalog import Cell
from balda.experiments.summary import summarize

THINGS = {"person": 40, "rider": 3, "car": 60, "bus": 2, "motorcycle": 4, "bicycle": 9}


def _run(out, method, seed, mpq, rider_pq):
    d = out / Cell(method, seed).name
    d.mkdir(parents=True)
    pc = {}
    for c in ("road", "building", *THINGS):
        n = THINGS.get(c, 10)
        pq = rider_pq if c == "rider" else 0.5
        pc[c] = {"pq": pq, "sq": 0.8, "rq": pq / 0.8, "tp": n // 2, "fp": 1, "fn": n - n // 2, "isthing": c in THINGS}
    m = {"mpq": mpq, "mpq_things": mpq - 0.1, "miou": 0.4, "per_class": pc}
    (d / "final_metrics.json").write_text(json.dumps(m))


def test_summary_of_a_panoptic_grid(tmp_path):
    for s, (a, b) in enumerate([(0.20, 0.25), (0.22, 0.24), (0.18, 0.26)]):
        _run(tmp_path, "panoptic/self_training", s, a, 0.1)
        _run(tmp_path, "panoptic/self_training+gbw", s, b, 0.1 + 0.05 * (s + 1))
    out = summarize(tmp_path, ["panoptic/self_training", "panoptic/self_training+gbw"], [0, 1, 2])
    assert [CLASS_NAMES[c] for c in out["rare"]] == ["bus", "rider", "motorcycle"]  # fewest GT instances
    (row,) = out["paired"]
    d = 100 * (np.array([0.25, 0.24, 0.26]) - np.array([0.20, 0.22, 0.18]))
    assert row["mpq"][0] == pytest.approx(d.mean()) and row["mpq"][1] == pytest.approx(4.303 * d.std(ddof=1) / 3**0.5)
    rare_gain = 100 * np.array([0.05, 0.10, 0.15]) / 3  # only rider of the 3 rare things changes
    assert row["rare_pq"][0] == pytest.approx(rare_gain.mean())
    md = (tmp_path / "summary.md").read_text()
    assert (
        "PQ rare things" in md and "| panoptic/self_training+gbw | 3 |" in md and (tmp_path / "class_pq.png").is_file()
    )
