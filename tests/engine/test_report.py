"""engine.report: one per-class plot and one confusion per task, chosen by the metrics' attributes."""

from types import SimpleNamespace

import numpy as np
import pytest

from balda.engine.report import write_run_plots


@pytest.mark.parametrize(
    "attr, file, k, extra",
    [
        ("iou", "class_iou.png", 19, {}),
        ("pq", "class_pq.png", 19, {}),
        ("per_class", "class_accuracy.png", 3, {"class_names": ["zero", "one", "two"]}),
    ],
)
def test_per_task_plots(tmp_path, attr, file, k, extra):
    metrics = SimpleNamespace(**{attr: np.linspace(0, 1, k), "confusion": np.eye(k) * 5 + 1}, **extra)
    records = [{"kind": "train", "step": s, "loss/source_ce": 1.0 / (s + 1)} for s in range(3)]
    written = {p.name for p in write_run_plots(tmp_path, metrics, records)}
    assert {file, "confusion.png", "losses.png"} <= written
    others = {"class_iou.png", "class_pq.png", "class_accuracy.png"} - {file}
    assert not any((tmp_path / "plots" / o).exists() for o in others)


def test_no_metrics_still_plots_curves(tmp_path):
    records = [{"kind": "train", "step": s, "loss/source_ce": 1.0, "gh/angle": 80.0} for s in range(3)]
    written = {p.name for p in write_run_plots(tmp_path, None, records)}
    assert written == {"losses.png", "gh_conflict.png"}
