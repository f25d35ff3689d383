#!/usr/bin/env python
"""The warm-start pair at 5 seeds: self-training against source-only, both continued from the
1000-iteration source-only model of the same seed.

Seeds 0-2 of the pair are in the streets grid (``results/streets_more``). Seeds 3-4 are kept apart
(``results/streets_warm_seeds34``) because the source-only checkpoints they start from were lost and
retrained on another machine, where they are not the recorded source-only runs (README, "More
seeds"); each of their pairs still starts from one shared model. This script reads the per-run
records of both folders (``final_metrics.json``, in git), trains nothing, and writes each seed's
difference, the methods' mean +- std and the paired 95% t-interval
(:func:`balda.experiments.summary.paired_differences`)::

    python benchmarks/warm_pairs.py            # -> benchmarks/results/warm_pairs.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
METHOD, CONTROL = "self_training@warm", "source_only@warm"
#: Where each seed's records are: the grid for seeds 0-2, the folder kept apart for seeds 3-4.
SOURCES = ((ROOT / "results" / "streets_more", (0, 1, 2)), (ROOT / "results" / "streets_warm_seeds34", (3, 4)))
METRICS = ("miou", "rare_recall", "min_iou")


def per_seed() -> dict[str, dict[int, dict[str, float]]]:
    """``{method: {seed: {metric: percent}}}`` of the two warm methods from the records."""
    from balda.experiments.catalog import Cell

    out: dict[str, dict[int, dict[str, float]]] = {METHOD: {}, CONTROL: {}}
    for folder, seeds in SOURCES:
        for m in out:
            for s in seeds:
                path = folder / Cell(m, s).name / "final_metrics.json"
                rec = json.loads(path.read_text())
                out[m][s] = {k: 100.0 * float(rec[k]) for k in METRICS}
    return out


def report(data: dict[str, dict[int, dict[str, float]]]) -> str:
    from balda.experiments.summary import _fmt_interval, paired_differences

    seeds = sorted(data[METHOD])
    lines = [
        "# Warm-start pair, 5 seeds",
        "",
        "`python benchmarks/warm_pairs.py`: from the per-run records of `results/streets_more` (seeds 0-2) "
        "and `results/streets_warm_seeds34` (seeds 3-4, whose 1000-iteration source-only starts were "
        "retrained on another machine); nothing trained.",
        "",
        "| seed | "
        + " | ".join(f"{METHOD} {k}" for k in METRICS)
        + " | "
        + " | ".join(f"Δ {k}" for k in METRICS)
        + " |",
        "|---" * (1 + 2 * len(METRICS)) + "|",
    ]
    for s in seeds:
        a, b = data[METHOD][s], data[CONTROL][s]
        lines.append(
            f"| {s} | "
            + " | ".join(f"{a[k]:.1f}" for k in METRICS)
            + " | "
            + " | ".join(f"{a[k] - b[k]:+.1f}" for k in METRICS)
            + " |"
        )
    lines += ["", "| method | seeds | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
    for m in (CONTROL, METHOD):
        vals = {k: np.array([data[m][s][k] for s in seeds]) for k in METRICS}
        cells = " | ".join(f"{v.mean():.1f} ± {v.std(ddof=1):.1f}" for v in vals.values())
        lines.append(f"| {m} | {len(seeds)} | {cells} |")
    (row,) = paired_differences(data, {METHOD: (CONTROL,)}, METRICS)
    lines += [
        "",
        f"{METHOD} against {CONTROL}, paired by seed ({row['n']} pairs, 95% t-interval, * = excludes 0): "
        + ", ".join(f"Δ {k} {_fmt_interval(*row[k])}" for k in METRICS),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--markdown", type=Path, default=ROOT / "benchmarks" / "results" / "warm_pairs.md")
    args = p.parse_args(argv)
    try:
        text = report(per_seed())
    except (OSError, ValueError, KeyError) as e:
        print(f"error: cannot read the warm-start records: {e}", file=sys.stderr)
        return 2
    args.markdown.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
