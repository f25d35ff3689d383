"""Summaries of a bench grid: mean +- std over seeds per method, paired-by-seed differences to each
method's control with 95% intervals, gradient-conflict and labelled-set tables, plots."""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from balda.data.labels import CLASS_NAMES

from .catalog import Cell, entries

log = logging.getLogger("balda.experiments")

#: 0.975 quantiles of Student's t with ``n - 1`` degrees of freedom, by the number of pairs ``n``.
_T975 = {
    2: 12.706,
    3: 4.303,
    4: 3.182,
    5: 2.776,
    6: 2.571,
    7: 2.447,
    8: 2.365,
    9: 2.306,
    10: 2.262,
    11: 2.228,
    12: 2.201,
    13: 2.179,
    14: 2.160,
    15: 2.145,
    16: 2.131,
    17: 2.120,
    18: 2.110,
    19: 2.101,
    20: 2.093,
}
#: The metrics compared by seed (percent): mIoU, mean recall of the rarest classes, min-class IoU.
PAIRED_METRICS = ("miou", "rare_recall", "min_iou")


def paired_interval(diffs: Iterable[float]) -> tuple[float, float, int]:
    """Mean ``d`` and half-width ``h`` of the 95% interval of paired differences, and their number ``n``.

    With ``d_s = m_s - c_s`` the difference of a method and its control trained with the same seed
    ``s``: ``d = mean_s d_s`` and ``h = t_{0.975, n-1} * sd(d_s) / sqrt(n)`` (Student's t, sample
    standard deviation with ``n - 1``); the interval ``[d - h, d + h]`` excludes 0 when the difference
    is significant at the 5% level. ``h`` is NaN for fewer than 2 pairs."""
    d = np.asarray(list(diffs), dtype=float)
    n = len(d)
    if n == 0:
        return math.nan, math.nan, 0
    if n < 2:
        return float(d.mean()), math.nan, 1
    t = _T975.get(n, 1.96)
    return float(d.mean()), float(t * d.std(ddof=1) / math.sqrt(n)), n


def paired_differences(
    per_seed: dict[str, dict[int, dict[str, float]]],
    controls: dict[str, tuple[str, ...]] | None = None,
    metrics: tuple[str, ...] = PAIRED_METRICS,
) -> list[dict]:
    """For every method with a control in ``per_seed`` (``{method: {seed: {metric: value}}}``), the
    paired-by-seed difference of each of ``metrics`` over the seeds both have:
    ``{"method", "control", "n", "<metric>": (mean, half-width)}`` (see :func:`paired_interval`)."""
    if controls is None:
        controls = {k: e.controls for k, e in entries().items() if e.controls}
    rows = []
    for method, ctrls in controls.items():
        if method not in per_seed:
            continue
        for ctrl in ctrls:
            if ctrl not in per_seed:
                continue
            seeds = sorted(set(per_seed[method]) & set(per_seed[ctrl]))
            if not seeds:
                continue
            row: dict = {"method": method, "control": ctrl, "n": len(seeds)}
            for k in metrics:
                mean, half, _ = paired_interval(per_seed[method][s][k] - per_seed[ctrl][s][k] for s in seeds)
                row[k] = (mean, half)
            rows.append(row)
    return rows


def _mean_std(x: np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation (``n - 1``; 0 for a single run)."""
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0


def _fmt_interval(mean: float, half: float) -> str:
    if math.isnan(half):
        return f"{mean:+.1f}"
    lo, hi = mean - half, mean + half
    mark = " *" if lo > 0 or hi < 0 else ""
    return f"{mean:+.1f} [{lo:+.1f}, {hi:+.1f}]{mark}"


def paired_table(
    rows: list[dict],
    columns: tuple[tuple[str, str], ...] = (
        ("miou", "Δ mIoU"),
        ("rare_recall", "Δ rare recall"),
        ("min_iou", "Δ min-class IoU"),
    ),
) -> list[str]:
    """Markdown lines of :func:`paired_differences` (``columns``: (metric key, header); ``*``: the 95%
    interval excludes 0)."""
    if not rows:
        return []
    lines = [
        "",
        "Each method against its control, paired by seed (mean difference of the runs with the same seed "
        "[95% t-interval]; * = the interval excludes 0):",
        "",
        "| method | control | pairs | " + " | ".join(h for _, h in columns) + " |",
        "|---|---|---|" + "---|" * len(columns),
    ]
    for r in rows:
        cells = " | ".join(_fmt_interval(*r[k]) for k, _ in columns)
        lines.append(f"| {r['method']} | {r['control']} | {r['n']} | {cells} |")
    return lines


def conflict_stats(run_dir: Path) -> tuple[float, float] | None:
    """``(share of steps in conflict (%), mean angle (deg))`` of a GH run from its logged
    ``gh/conflict`` and ``gh/angle`` (means over the logging intervals); None without GH logs."""
    from balda.engine.logger import read_metrics

    recs = read_metrics(run_dir, "train")
    conf = [r["gh/conflict"] for r in recs if r.get("gh/conflict") is not None]
    ang = [r["gh/angle"] for r in recs if r.get("gh/angle") is not None]
    if not conf:
        return None
    return 100 * float(np.mean(conf)), float(np.mean(ang)) if ang else math.nan


def write_summary_files(out: Path, md: str, runs: list[dict], fields: list[str], data: dict) -> None:
    """Write a grid's ``summary.md`` (``md``), ``runs.csv`` (one row per run, columns ``fields``) and
    ``summary.json`` (``data``) into ``out``: the three files every benchmark's summary leaves."""
    (out / "summary.md").write_text(md)
    with open(out / "runs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(runs)
    (out / "summary.json").write_text(json.dumps(data, indent=1))


def conflict_table(table: dict, how: str) -> list[str]:
    """Markdown lines of the gradient-conflict table of the GH rows of ``table`` (those with
    ``gh_conflict`` / ``gh_angle`` from :func:`conflict_stats`); ``how`` says how they were averaged.
    No lines without GH rows."""
    gh_rows = {k: t for k, t in table.items() if "gh_conflict" in t}
    if not gh_rows:
        return []
    lines = [
        "",
        f"Gradient conflict between the task and alignment gradients (GH runs; {how}):",
        "",
        "| method | steps in conflict (%) | mean angle (deg) |",
        "|---|---|---|",
    ]
    for method, t in gh_rows.items():
        lines.append(
            f"| {method} | {t['gh_conflict'][0]:.1f} ± {t['gh_conflict'][1]:.1f} | "
            f"{t['gh_angle'][0]:.1f} ± {t['gh_angle'][1]:.1f} |"
        )
    return lines


def _per_class(m: dict, key: str = "iou") -> np.ndarray:
    pc = m.get("per_class", {})
    return np.array(
        [(pc.get(c, {}) or {}).get(key, np.nan) if isinstance(pc.get(c), dict) else np.nan for c in CLASS_NAMES],
        dtype=float,
    )


def _rarest(results: list[dict], k: int) -> list[int]:
    """The k rarest target classes by ground-truth pixels of the val confusion matrix."""
    conf = np.asarray(results[0]["confusion"], dtype=float)
    gt = conf.sum(1)
    present = np.flatnonzero(gt > 0)
    return [int(c) for c in present[np.argsort(gt[present])][:k]]


def summarize(
    out: Path, methods: Iterable[str], seeds: Iterable[int] | Mapping[str, Iterable[int]], rare_k: int = 6
) -> dict:
    """Aggregate the finished cells into ``summary.{md,csv,json}`` and comparison plots (the
    classification grid: :func:`balda.experiments.summary_cls.summarize_classification`).

    ``seeds``: the seeds of every method, or ``{method: seeds}`` where methods ran at different
    numbers of seeds; a method is summarised over its own seeds' finished runs."""
    from .catalog import benchmark_of

    methods = list(methods)
    seeds = {m: list(seeds[m]) for m in methods} if isinstance(seeds, Mapping) else dict.fromkeys(methods, list(seeds))
    metric = benchmark_of(methods).metric
    if metric == "accuracy":
        from .summary_cls import summarize_classification

        return summarize_classification(out, methods, seeds)
    if metric == "mpq":
        from .summary_pan import summarize_panoptic

        return summarize_panoptic(out, methods, seeds)
    rows = {}
    runs = []
    by_seed: dict[str, dict[int, dict]] = {}
    for method in methods:
        ms = []
        for s in seeds[method]:
            p = out / Cell(method, s).name / "final_metrics.json"
            if p.is_file():
                m = json.loads(p.read_text())
                ms.append(m)
                by_seed.setdefault(method, {})[s] = m
                runs.append({"method": method, "seed": s, **{k: m.get(k) for k in ("miou", "min_iou", "acc")}})
        if ms:
            rows[method] = ms
    if not rows:
        return {}
    rare = _rarest(next(iter(rows.values())), rare_k)
    per_seed = {
        method: {
            s: {
                "miou": 100 * m["miou"],
                "min_iou": 100 * m["min_iou"],
                "rare_recall": 100 * float(np.nanmean(_per_class(m, "recall")[rare])),
            }
            for s, m in ms.items()
        }
        for method, ms in by_seed.items()
    }
    paired = paired_differences(per_seed)
    table = {}
    curves: dict[str, tuple[list, list]] = {}
    for method, ms in rows.items():
        gh_conf, gh_angle, kl, min_share = [], [], [], []
        loss_by_step: dict[int, list[float]] = {}
        for s in by_seed[method]:  # the finished runs only (not a cell still training)
            from balda.engine.logger import read_metrics

            active = read_metrics(out / Cell(method, s).name, "active")
            if active and active[-1].get("active/kl_uniform") is not None:  # labelled set after the last round
                kl.append(float(active[-1]["active/kl_uniform"]))
                min_share.append(100 * float(active[-1]["active/min_class_share"]))
            recs = read_metrics(out / Cell(method, s).name, "train")
            stats = conflict_stats(out / Cell(method, s).name)
            if stats is not None:
                gh_conf.append(stats[0])
                gh_angle.append(stats[1])
            for r in recs:
                if r.get("loss/source.ce") is not None:
                    loss_by_step.setdefault(r["step"], []).append(r["loss/source.ce"])
        if loss_by_step:
            steps = sorted(loss_by_step)
            curves[method] = (steps, [float(np.mean(loss_by_step[t])) for t in steps])
        miou = np.array([m["miou"] for m in ms]) * 100
        mini = np.array([m["min_iou"] for m in ms]) * 100
        rrec = np.array([np.nanmean(_per_class(m, "recall")[rare]) for m in ms]) * 100
        ious = np.stack([_per_class(m, "iou") for m in ms]) * 100
        table[method] = {
            "n": len(ms),
            "miou": _mean_std(miou),
            "min_iou": _mean_std(mini),
            "rare_recall": _mean_std(rrec),
            "iou": np.nanmean(ious, 0),
        }
        if gh_conf:
            table[method]["gh_conflict"] = (float(np.mean(gh_conf)), float(np.std(gh_conf)))
            table[method]["gh_angle"] = (float(np.mean(gh_angle)), float(np.std(gh_angle)))
        if kl:
            table[method]["labelled_kl"] = (float(np.mean(kl)), float(np.std(kl)))
            table[method]["labelled_min_share"] = (float(np.mean(min_share)), float(np.std(min_share)))
    names = [CLASS_NAMES[c] for c in rare]
    lines = [
        f"Rarest target classes (val ground truth): {', '.join(names)}.",
        "",
        "| method | seeds | mIoU | min-class IoU | rare recall |",
        "|---|---|---|---|---|",
    ]
    for method, t in table.items():
        lines.append(
            f"| {method} | {t['n']} | {t['miou'][0]:.1f} ± {t['miou'][1]:.1f} | "
            f"{t['min_iou'][0]:.1f} ± {t['min_iou'][1]:.1f} | "
            f"{t['rare_recall'][0]:.1f} ± {t['rare_recall'][1]:.1f} |"
        )
    lines += paired_table(paired)
    lines += conflict_table(table, "mean over logged intervals, then over seeds")
    al_rows = {k: t for k, t in table.items() if "labelled_kl" in t}
    if al_rows:
        lines += [
            "",
            "Labelled target set after the last acquisition round (active runs; mean over seeds): KL "
            "divergence of its class histogram to uniform (lower = more balanced) and the share of its "
            "rarest class:",
            "",
            "| method | KL to uniform | rarest-class share (%) |",
            "|---|---|---|",
        ]
        for method, t in al_rows.items():
            lines.append(
                f"| {method} | {t['labelled_kl'][0]:.3f} ± {t['labelled_kl'][1]:.3f} | "
                f"{t['labelled_min_share'][0]:.2f} ± {t['labelled_min_share'][1]:.2f} |"
            )
    lines += [
        "",
        "Per-class IoU (mean over seeds):",
        "",
        "| method | " + " | ".join(CLASS_NAMES) + " |",
        "|---" * (len(CLASS_NAMES) + 1) + "|",
    ]
    for method, t in table.items():
        lines.append(f"| {method} | " + " | ".join("–" if np.isnan(v) else f"{v:.1f}" for v in t["iou"]) + " |")
    md = "\n".join(lines) + "\n"
    write_summary_files(
        out,
        md,
        runs,
        ["method", "seed", "miou", "min_iou", "acc"],
        {
            "rare_classes": names,
            "methods": {
                k: {
                    **{
                        m: list(v)
                        for m, v in t.items()
                        if m
                        in (
                            "miou",
                            "min_iou",
                            "rare_recall",
                            "gh_conflict",
                            "gh_angle",
                            "labelled_kl",
                            "labelled_min_share",
                        )
                    },
                    "n": t["n"],
                    "iou": [None if np.isnan(x) else x for x in t["iou"]],
                }
                for k, t in table.items()
            },
            "runs": runs,
            "paired": [{**r, **{k: list(r[k]) for k in PAIRED_METRICS}} for r in paired],
        },
    )
    try:
        from balda import plots

        plots.plot_class_iou(
            {k: t["iou"] / 100 for k, t in table.items()},
            CLASS_NAMES,
            out / "class_iou.png",
            title="target per-class IoU",
        )
        plots.plot_bars(
            {k: t["miou"][0] for k, t in table.items()},
            out / "miou.png",
            "target mIoU",
            "mIoU (%)",
            errors={k: t["miou"][1] for k, t in table.items()},
        )
        if curves:
            plots.plot_curves(
                curves,
                out / "training_source_ce.png",
                "source CE during training (mean over seeds)",
                "iteration",
                "loss",
            )
        plots.plot_bars(
            {k: t["rare_recall"][0] for k, t in table.items()},
            out / "rare_recall.png",
            f"mean recall of the {len(rare)} rarest classes",
            "recall (%)",
            errors={k: t["rare_recall"][1] for k, t in table.items()},
        )
    except Exception as e:  # pragma: no cover - plots never lose results
        log.warning("could not draw summary plots: %s", e)
    return {"markdown": md, "table": table, "rare": rare, "paired": paired}
