#!/usr/bin/env python
"""Why GBW lowers rare-class recall on the embedded benchmark: its class weights against each class's change.

GBW (docs/gbw.md) weights class ``c`` by ``w = proj_simplex(g^2 / (2 lam))``, ``g_c`` the norm of the
per-class loss gradient on the batch: a measure of how badly the batch's class is fit, not of how rare
it is. This script reads a bench grid's per-run records (``final_metrics.json`` and the weights logged
in ``metrics.jsonl``, both kept in git) and writes, for each GBW method against its control, one row per
class: the mean logged weight on the source and target terms (mean over the logged steps where the
class is present, then over seeds), and the paired-by-seed change of the class's target recall and IoU
with its 95% t-interval (:func:`balda.experiments.summary.paired_interval`) and the number of seeds
where recall fell. The header line of each table gives the correlation across classes of the source
weight and the recall change. It trains nothing::

    python benchmarks/gbw_rare_classes.py                      # results/streets_more
    python benchmarks/gbw_rare_classes.py --grid results/streets_more --markdown out.md
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
#: (GBW method, its control) of the catalogue, in the order they are reported.
PAIRS = (
    ("source_only+gbw", "source_only"),
    ("source_only+gbw_faithful", "source_only"),
    ("self_training+gbw", "self_training"),
    ("self_training+gbw_faithful", "self_training"),
)


def logged_weights(run: Path, term: str) -> dict[str, float]:
    """Mean of a run's logged ``weights/<term>/<class>`` over the steps where the class was present
    (the series :func:`balda.engine.report.class_weight_series` reads for the run's weight plots)."""
    from balda.engine.report import class_weight_series

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    _, names, w = class_weight_series(records, term)
    present = np.isfinite(w)
    return {c: float(w[present[:, j], j].mean()) for j, c in enumerate(names) if present[:, j].any()}


def _seeds(grid: Path, method: str) -> list[int]:
    from balda.experiments.catalog import Cell
    from balda.experiments.runner import is_done

    return [s for s in range(100) if is_done(Cell(method, s), grid)]


def pair_table(grid: Path, method: str, control: str) -> list[str] | None:
    """The Markdown lines of one method against its control, or None if they share no finished seed."""
    from balda.data.labels import CLASS_NAMES
    from balda.experiments.catalog import Cell
    from balda.experiments.summary import _fmt_interval, paired_interval

    seeds = sorted(set(_seeds(grid, method)) & set(_seeds(grid, control)))
    if not seeds:
        return None
    runs = {s: (grid / Cell(method, s).name, grid / Cell(control, s).name) for s in seeds}
    final = {s: [json.loads((r / "final_metrics.json").read_text()) for r in runs[s]] for s in seeds}
    rare = set(final[seeds[0]][1]["rare_classes"])
    weights = {t: [logged_weights(runs[s][0], t) for s in seeds] for t in ("source", "target")}
    rows, w_src, d_rec = [], [], []
    for c in CLASS_NAMES:
        w = {t: [ws[c] for ws in weights[t] if c in ws] for t in weights}
        diff = {
            key: [100 * (final[s][0]["per_class"][c][key] - final[s][1]["per_class"][c][key]) for s in seeds]
            for key in ("recall", "iou")
        }
        rec, iou = paired_interval(diff["recall"]), paired_interval(diff["iou"])
        fell = sum(d < 0 for d in diff["recall"])
        ws = float(np.mean(w["source"])) if w["source"] else math.nan
        wt = f"{np.mean(w['target']):.3f}" if w["target"] else "-"
        rows.append((ws, c, wt, rec, iou, fell))
        w_src.append(ws)
        d_rec.append(rec[0])
    ok = np.isfinite(w_src)
    r = float(np.corrcoef(np.asarray(w_src)[ok], np.asarray(d_rec)[ok])[0, 1])
    lines = [
        f"### {method} against {control} ({len(seeds)} seeds: {', '.join(map(str, seeds))})",
        "",
        f"Correlation across classes of the source weight and the recall change: r = {r:+.2f}.",
        "",
        "| class | weight, source | weight, target | Δ recall | Δ IoU | seeds where recall fell |",
        "|---|---:|---:|---|---|---:|",
    ]
    for ws, c, wt, rec, iou, fell in sorted(rows, key=lambda x: (math.isnan(x[0]), x[0])):  # unweighted last
        name = f"**{c}** (rare)" if c in rare else c
        src = "-" if math.isnan(ws) else f"{ws:.3f}"
        delta = f"{_fmt_interval(*rec[:2])} | {_fmt_interval(*iou[:2])}"
        lines.append(f"| {name} | {src} | {wt} | {delta} | {fell}/{len(seeds)} |")
    return lines + [""]


def report(grid: Path) -> str:
    from balda.core.errors import ConfigError

    tables = [t for m, c in PAIRS if (t := pair_table(grid, m, c)) is not None]
    if not tables:
        raise ConfigError(f"--grid {grid}: no finished GBW run with its control (methods {[m for m, _ in PAIRS]})")
    head = [
        "# GBW's class weights and each class's change",
        "",
        f"`python benchmarks/gbw_rare_classes.py --grid {grid.as_posix()}`: from the grid's per-run records, no "
        "training. Rows sorted by the source weight; weights are means over the logged steps where the class is "
        "present, then over seeds; Δ are paired by seed (percentage points, 95% t-interval, * = excludes 0).",
        "",
    ]
    return "\n".join(head + [line for t in tables for line in t])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", type=Path, default=Path("results/streets_more"), help="a bench output folder")
    p.add_argument("--markdown", type=Path, default=ROOT / "benchmarks" / "results" / "gbw_rare_classes.md")
    args = p.parse_args(argv)
    from balda.core.errors import BaldaError

    try:
        text = report(args.grid)
    except BaldaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
