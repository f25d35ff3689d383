"""Plots of a finished run, drawn from its ``metrics.jsonl`` and final metrics."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from balda.data.labels import CLASS_NAMES

log = logging.getLogger("balda.report")

#: Per task, (metrics attribute, plot file, metric name, confusion unit): semantic segmentation
#: (:class:`~balda.engine.metrics.SegMetrics`), panoptic (per-class PQ; the confusion is the
#: semantic one) and classification (per-class accuracy, class names from the metrics).
_PER_CLASS = (
    ("iou", "class_iou.png", "IoU", "pixels"),
    ("pq", "class_pq.png", "PQ", "pixels"),
    ("per_class", "class_accuracy.png", "accuracy", "images"),
)


def class_weight_series(train: list[dict], term: str) -> tuple[list[int], list[str], np.ndarray]:
    """The class weights a run logged for loss ``term`` (``weights/<term>/<class>`` of its train
    records): the steps, the class names (or indices) and a (steps, classes) float array, NaN where a
    class was absent from the batch. Empty lists and a (0, 0) array when the term logged none."""
    prefix = f"weights/{term}/"
    rows = [r for r in train if any(k.startswith(prefix) for k in r)]
    if not rows:
        return [], [], np.zeros((0, 0))
    names = [k[len(prefix) :] for k in rows[0] if k.startswith(prefix)]
    w = np.array([[r.get(prefix + c, np.nan) for c in names] for r in rows], dtype=float)
    return [r["step"] for r in rows], names, w


def write_run_plots(run_dir: str | Path, metrics, records: list[dict]) -> list[Path]:
    """Write ``plots/class_iou.png``, ``plots/confusion.png``, ``plots/losses.png``,
    ``plots/eval.png``, one ``plots/class_weights_<term>.png`` per weighted loss term, and the plots
    the method modules registered (:data:`balda.core.registry.RUN_PLOTS`: ``fn(plots_dir, train_records)``)."""
    from balda import plots

    out = Path(run_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for attr, file, metric, unit in _PER_CLASS:  # the first the metrics object has decides the task
        if metrics is not None and hasattr(metrics, attr):
            names = list(getattr(metrics, "class_names", None) or CLASS_NAMES)
            written.append(
                plots.plot_class_iou(
                    {Path(run_dir).name: np.asarray(getattr(metrics, attr))},
                    names,
                    out / file,
                    title=f"per-class {metric} (final model)",
                    metric=metric,
                )
            )
            written.append(plots.plot_confusion(np.asarray(metrics.confusion), names, out / "confusion.png", unit=unit))
            break
    train = [r for r in records if r.get("kind") == "train"]
    loss_keys = sorted({k for r in train for k in r if k.startswith("loss/")})
    if loss_keys:
        series = {
            k[5:]: ([r["step"] for r in train if r.get(k) is not None], [r[k] for r in train if r.get(k) is not None])
            for k in loss_keys
        }
        written.append(plots.plot_curves(series, out / "losses.png", "training losses", "iteration", "loss"))
    evals = [r for r in records if r.get("kind") == "eval"]
    if len(evals) > 1:  # a curve needs two evaluations (train.eval_every > 0); the final one is class_iou.png
        series = {
            k[5:]: (
                [r["step"] for r in evals if r.get(k) is not None],
                [100 * r[k] for r in evals if r.get(k) is not None],
            )
            for k in (
                "eval/miou",
                "eval/min_iou",
                "eval/rare_recall",
                "eval/accuracy",
                "eval/mean_class_accuracy",
                "eval/mpq",
                "eval/mpq_things",
            )
            if any(k in r for r in evals)
        }
        written.append(plots.plot_curves(series, out / "eval.png", "target validation", "iteration", "%"))
    gh_keys = [k for k in ("gh/angle", "gh/conflict") if any(k in r for r in train)]
    if gh_keys:
        series = {k: ([r["step"] for r in train if k in r], [r[k] for r in train if k in r]) for k in gh_keys}
        written.append(plots.plot_curves(series, out / "gh_conflict.png", "gradient conflict", "iteration", ""))
    terms = sorted({k.split("/")[1] for r in train for k in r if k.startswith("weights/") and k.count("/") == 2})
    for term in terms:
        steps, names, w = class_weight_series(train, term)
        if steps:
            written.append(plots.plot_class_weights(steps, w, names, out / f"class_weights_{term}.png"))
    from balda.core.registry import RUN_PLOTS

    for name, plot in RUN_PLOTS.items():  # plots registered by the method modules (CPSL's marginal ...)
        try:
            written += plot(out, train) or []
        except Exception as e:  # noqa: BLE001 - one plot never stops the others
            log.warning("run plot %s failed: %s", name, e)
    return written
