"""Paired-by-seed comparisons of a method with its control (balda.experiments.summary)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from balda.experiments.catalog import CATALOG, CONTROLS
from balda.experiments.summary import paired_differences, paired_interval, paired_table


def test_paired_interval_closed_form():
    d = [1.0, 2.0, 4.0]
    mean, half, n = paired_interval(d)
    sd = math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    assert n == 3 and mean == pytest.approx(7 / 3)
    assert half == pytest.approx(4.303 * sd / math.sqrt(3))


def test_paired_interval_agrees_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 9):
        d = rng.normal(0.5, 1.0, n)
        mean, half, _ = paired_interval(d)
        lo, hi = stats.t.interval(0.95, n - 1, loc=d.mean(), scale=stats.sem(d))
        assert mean - half == pytest.approx(lo, abs=2e-3) and mean + half == pytest.approx(hi, abs=2e-3)


def test_paired_interval_degenerate():
    assert paired_interval([])[2] == 0
    mean, half, n = paired_interval([2.5])
    assert mean == 2.5 and math.isnan(half) and n == 1


def test_paired_differences_pair_by_seed():
    per_seed = {
        "self_training": {
            0: {"miou": 50, "rare_recall": 10, "min_iou": 0},
            1: {"miou": 52, "rare_recall": 12, "min_iou": 1},
            2: {"miou": 49, "rare_recall": 9, "min_iou": 0},
        },
        "self_training+gbw": {
            0: {"miou": 51, "rare_recall": 14, "min_iou": 2},
            2: {"miou": 50, "rare_recall": 13, "min_iou": 1},
        },
    }
    rows = paired_differences(per_seed)
    assert len(rows) == 1 and rows[0]["control"] == "self_training" and rows[0]["n"] == 2
    assert rows[0]["miou"][0] == pytest.approx(1.0)  # (51-50 + 50-49) / 2, seed 1 unpaired
    assert rows[0]["rare_recall"][0] == pytest.approx(4.0)
    assert rows[0]["miou"][1] == pytest.approx(0.0)  # identical differences: zero width
    md = "\n".join(paired_table(rows))
    assert "| self_training+gbw | self_training | 2 |" in md and "+4.0 [+4.0, +4.0] *" in md


def test_every_control_is_in_the_catalogue():
    for method, ctrls in CONTROLS.items():
        assert method in CATALOG, method
        for c in ctrls:
            assert c in CATALOG, (method, c)
