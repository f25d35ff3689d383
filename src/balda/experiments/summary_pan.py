"""Summary of a panoptic grid: mPQ (all / things / stuff) and mIoU mean +- std over seeds, per-class
PQ, and each method against its control paired by seed with 95% intervals - on mPQ, on the things,
and on the PQ and RQ (the share of instances found and matched) of the rarest thing classes, which
is where GBW's claim for panoptic segmentation should show."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np

from balda.data.labels import CLASS_NAMES

from .catalog import Cell
from .summary import _mean_std, paired_differences, paired_table, write_summary_files

log = logging.getLogger("balda.experiments")

#: Per-seed metrics (percent) compared by seed.
PAN_METRICS = ("mpq", "mpq_things", "rare_pq", "rare_rq", "miou")
_HEADERS = {
    "mpq": "Δ mPQ",
    "mpq_things": "Δ PQ things",
    "rare_pq": "Δ PQ rare things",
    "rare_rq": "Δ RQ rare things",
    "miou": "Δ mIoU",
}


def _per_class(m: dict, key: str) -> np.ndarray:
    pc = m.get("per_class", {})
    return np.array([np.nan if (pc.get(c) or {}).get(key) is None else pc[c][key] for c in CLASS_NAMES], dtype=float)


def rare_things(m: dict, k: int = 3) -> list[int]:
    """The ``k`` thing classes of the evaluation with the fewest ground-truth segments (TP + FN)."""
    pc = m.get("per_class", {})
    things = [(pc[c]["tp"] + pc[c]["fn"], CLASS_NAMES.index(c)) for c in pc if pc[c].get("isthing")]
    things = [t for t in things if t[0] > 0]
    return [c for _, c in sorted(things)[:k]]


def _seed_metrics(m: dict, rare: list[int]) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        pq, rq = _per_class(m, "pq"), _per_class(m, "rq")
        return {
            "mpq": 100 * float(m["mpq"] or 0.0),
            "mpq_things": 100 * float(m.get("mpq_things") or 0.0),
            "rare_pq": 100 * float(np.nanmean(pq[rare])) if rare else float("nan"),
            "rare_rq": 100 * float(np.nanmean(rq[rare])) if rare else float("nan"),
            "miou": 100 * float(m.get("miou") or 0.0),
        }


def summarize_panoptic(out: Path, methods: list[str], seeds: dict[str, list[int]]) -> dict:
    """Aggregate the finished cells of a panoptic grid into ``summary.{md,csv,json}`` and plots
    (``mpq.png``, ``class_pq.png``); returns ``{"markdown", "table", "paired", "rare"}``."""
    by_seed: dict[str, dict[int, dict]] = {}
    for method in methods:
        for s in seeds[method]:
            p = out / Cell(method, s).name / "final_metrics.json"
            if p.is_file():
                by_seed.setdefault(method, {})[s] = json.loads(p.read_text())
    if not by_seed:
        return {}
    rare = rare_things(next(iter(next(iter(by_seed.values())).values())))
    per_seed = {meth: {s: _seed_metrics(m, rare) for s, m in ms.items()} for meth, ms in by_seed.items()}
    runs = [{"method": meth, "seed": s, **v} for meth, ms in per_seed.items() for s, v in ms.items()]
    paired = paired_differences(per_seed, metrics=PAN_METRICS)
    table: dict[str, dict] = {}
    for method, ms in by_seed.items():
        t: dict = {"n": len(ms)}
        for k in PAN_METRICS:
            t[k] = _mean_std(np.array([per_seed[method][s][k] for s in ms]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            t["pq"] = 100 * np.nanmean(np.stack([_per_class(m, "pq") for m in ms.values()]), 0)
        table[method] = t
    names = ", ".join(CLASS_NAMES[c] for c in rare)
    lines = [
        f"Rarest thing classes (fewest ground-truth instances in the target val set): {names}.",
        "",
        "| method | seeds | mPQ | PQ things | PQ rare things | RQ rare things | mIoU |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, t in table.items():
        cells = " | ".join(f"{t[k][0]:.1f} ± {t[k][1]:.1f}" for k in PAN_METRICS)
        lines.append(f"| {method} | {t['n']} | {cells} |")
    lines += paired_table(paired, tuple((k, _HEADERS[k]) for k in PAN_METRICS))
    view = [c for c in range(len(CLASS_NAMES)) if any(np.isfinite(t["pq"][c]) for t in table.values())]
    lines += [
        "",
        "Per-class PQ (mean over seeds):",
        "",
        "| method | " + " | ".join(CLASS_NAMES[c] for c in view) + " |",
        "|---" * (len(view) + 1) + "|",
    ]
    for method, t in table.items():
        lines.append(
            f"| {method} | " + " | ".join("–" if np.isnan(t["pq"][c]) else f"{t['pq'][c]:.1f}" for c in view) + " |"
        )
    md = "\n".join(lines) + "\n"
    write_summary_files(
        out,
        md,
        runs,
        ["method", "seed", *PAN_METRICS],
        {
            "rare_things": [CLASS_NAMES[c] for c in rare],
            "methods": {
                k: {
                    "n": t["n"],
                    **{m: list(t[m]) for m in PAN_METRICS},
                    "pq": [None if np.isnan(x) else float(x) for x in t["pq"]],
                }
                for k, t in table.items()
            },
            "runs": runs,
            "paired": [{**r, **{k: list(r[k]) for k in PAN_METRICS}} for r in paired],
        },
    )
    try:
        from balda import plots

        plots.plot_bars(
            {k: t["mpq"][0] for k, t in table.items()},
            out / "mpq.png",
            "target mPQ",
            "mPQ (%)",
            errors={k: t["mpq"][1] for k, t in table.items()},
        )
        plots.plot_class_iou(
            {k: t["pq"] / 100 for k, t in table.items()}, CLASS_NAMES, out / "class_pq.png", "target per-class PQ", "PQ"
        )
    except Exception as e:  # pragma: no cover - plots never lose results
        log.warning("could not draw summary plots: %s", e)
    return {"markdown": md, "table": table, "paired": paired, "rare": rare}
