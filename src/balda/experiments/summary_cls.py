"""Summary of an image-classification grid (the digits benchmark): target accuracy mean +- std over
seeds, each method against its control paired by seed with 95% intervals, and the gradient-conflict
statistics of the GH runs (the share of steps whose task and alignment gradients meet at an obtuse
angle, and the mean angle), which the GH paper reports per base."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np

from .catalog import Cell
from .summary import _mean_std, conflict_stats, conflict_table, paired_differences, paired_table, write_summary_files

log = logging.getLogger("balda.experiments")

#: Per-seed metrics compared by seed (percent): top-1 accuracy, mean per-class accuracy (VisDA's
#: figure) and the accuracy of the worst class (the class-imbalance view).
CLS_METRICS = ("accuracy", "mean_class_accuracy", "min_class_accuracy")
_HEADERS = {"accuracy": "accuracy", "mean_class_accuracy": "mean per-class acc.", "min_class_accuracy": "worst class"}


def _per_class(m: dict) -> tuple[list[str], np.ndarray]:
    pc = m.get("per_class", {}) or {}
    names = list(pc)
    return names, np.array([np.nan if pc[n] is None else float(pc[n]) for n in names], dtype=float)


def _seed_metrics(m: dict) -> dict[str, float]:
    _, acc = _per_class(m)
    worst = float(np.nanmin(acc)) if np.isfinite(acc).any() else float("nan")
    return {
        "accuracy": 100 * float(m["accuracy"]),
        "mean_class_accuracy": 100 * float(m["mean_class_accuracy"]),
        "min_class_accuracy": 100 * worst,
    }


def summarize_classification(out: Path, methods: list[str], seeds: dict[str, list[int]]) -> dict:
    """Aggregate the finished cells of a classification grid into ``summary.{md,csv,json}`` and plots
    (``accuracy.png``, ``class_accuracy.png``); returns ``{"markdown", "table", "paired"}``."""
    by_seed: dict[str, dict[int, dict]] = {}
    runs = []
    for method in methods:
        for s in seeds[method]:
            p = out / Cell(method, s).name / "final_metrics.json"
            if p.is_file():
                m = json.loads(p.read_text())
                by_seed.setdefault(method, {})[s] = m
                runs.append({"method": method, "seed": s, **_seed_metrics(m)})
    if not by_seed:
        return {}
    per_seed = {meth: {s: _seed_metrics(m) for s, m in ms.items()} for meth, ms in by_seed.items()}
    paired = paired_differences(per_seed, metrics=CLS_METRICS)
    table: dict[str, dict] = {}
    class_names: list[str] = []
    for method, ms in by_seed.items():
        t: dict = {"n": len(ms)}
        for k in CLS_METRICS:
            t[k] = _mean_std(np.array([per_seed[method][s][k] for s in ms]))
        names, _ = _per_class(next(iter(ms.values())))
        class_names = class_names or names
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a class absent from a short evaluation
            t["per_class"] = 100 * np.nanmean(np.stack([_per_class(m)[1] for m in ms.values()]), 0)
        stats = [conflict_stats(out / Cell(method, s).name) for s in ms]
        stats = [x for x in stats if x is not None]
        if stats:
            t["gh_conflict"] = _mean_std(np.array([x[0] for x in stats]))
            t["gh_angle"] = _mean_std(np.array([x[1] for x in stats]))
        table[method] = t
    lines = [
        "Target test accuracy (%), mean ± std over seeds:",
        "",
        "| method | seeds | accuracy | mean per-class acc. | worst class |",
        "|---|---|---|---|---|",
    ]
    for method, t in table.items():
        cells = " | ".join(f"{t[k][0]:.1f} ± {t[k][1]:.1f}" for k in CLS_METRICS)
        lines.append(f"| {method} | {t['n']} | {cells} |")
    lines += paired_table(paired, tuple((k, f"Δ {_HEADERS[k]}") for k in CLS_METRICS))
    lines += conflict_table(
        table,
        "share of steps with an obtuse angle and the mean angle, over the logged intervals, then mean ± std over seeds",
    )
    md = "\n".join(lines) + "\n"
    write_summary_files(
        out,
        md,
        runs,
        ["method", "seed", *CLS_METRICS],
        {
            "classes": class_names,
            "methods": {
                k: {
                    "n": t["n"],
                    **{m: list(t[m]) for m in (*CLS_METRICS, "gh_conflict", "gh_angle") if m in t},
                    "per_class": [None if np.isnan(x) else float(x) for x in t["per_class"]],
                }
                for k, t in table.items()
            },
            "runs": runs,
            "paired": [{**r, **{k: list(r[k]) for k in CLS_METRICS}} for r in paired],
        },
    )
    try:
        from balda import plots

        plots.plot_bars(
            {k: t["accuracy"][0] for k, t in table.items()},
            out / "accuracy.png",
            "target test accuracy",
            "accuracy (%)",
            errors={k: t["accuracy"][1] for k, t in table.items()},
        )
        plots.plot_class_iou(
            {k: t["per_class"] for k, t in table.items()},
            class_names,
            out / "class_accuracy.png",
            title="target per-class accuracy",
            metric="accuracy",
        )
    except Exception as e:  # pragma: no cover - plots never lose results
        log.warning("could not draw summary plots: %s", e)
    return {"markdown": md, "table": table, "paired": paired}
