#!/usr/bin/env python
"""How much of the street benchmark a per-pixel colour lookup solves (no network, no context).

A per-pixel RGB-histogram classifier: quantise RGB to 16 levels per channel (4096 bins), count the
labelled source pixels of every (bin, class), predict ``argmax_c count(bin, c)`` for each pixel.
Trained on source images ``0..n_train-1``, evaluated (mIoU over the 19 classes, dataset-level
confusion matrix) on held-out source images (within the domain) and on target val images (across
the gap). If colour alone nearly solves a domain, a network can learn colour shortcuts that do not
transfer: the benchmark is meant to keep this figure well below what a network reaches.

    python benchmarks/colour_classifier.py [--profile cityscapes] [--shift 0.65] [--out FILE]

Writes a JSON record (default ``benchmarks/results/colour_classifier.json``) and prints a line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from balda.data.labels import NUM_CLASSES  # noqa: E402
from balda.data.streets import DEFAULT_SHIFT, GENERATOR_VERSION, image_rng, render_scene  # noqa: E402

BINS = 16


def _bins(img: np.ndarray) -> np.ndarray:
    q = (img.astype(np.int64) * BINS) // 256
    return (q[..., 0] * BINS + q[..., 1]) * BINS + q[..., 2]


def _render(key: str, n: int, start: int, args) -> list[tuple[np.ndarray, np.ndarray]]:
    dom = "source" if key == "source" else "target"
    return [
        render_scene(image_rng(args.seed, key, i), dom, tuple(args.size), args.shift, args.profile)
        for i in range(start, start + n)
    ]


def _miou(pairs, table: np.ndarray) -> float:
    conf = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for img, lab in pairs:
        m = lab < NUM_CLASSES
        pred = table[_bins(img)[m]]
        conf += np.bincount(lab[m].astype(np.int64) * NUM_CLASSES + pred, minlength=NUM_CLASSES**2).reshape(
            NUM_CLASSES, NUM_CLASSES
        )
    tp = np.diag(conf).astype(float)
    denom = conf.sum(0) + conf.sum(1) - tp
    present = conf.sum(1) > 0
    return float(np.mean(tp[present] / np.maximum(denom[present], 1)))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="cityscapes")
    ap.add_argument("--shift", type=float, default=DEFAULT_SHIFT, help="domain shift (default: the benchmark's)")
    ap.add_argument("--size", type=int, nargs=2, default=(128, 256))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-train", type=int, default=500)
    ap.add_argument("--n-test", type=int, default=100)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "colour_classifier.json")
    args = ap.parse_args(argv)

    counts = np.zeros((BINS**3, NUM_CLASSES), np.int64)
    for img, lab in _render("source", args.n_train, 0, args):
        m = lab < NUM_CLASSES
        counts += np.bincount(_bins(img)[m] * NUM_CLASSES + lab[m], minlength=BINS**3 * NUM_CLASSES).reshape(
            BINS**3, NUM_CLASSES
        )
    table = counts.argmax(1)
    rec = {
        "generator_version": GENERATOR_VERSION,
        "profile": args.profile,
        "shift": args.shift,
        "size": list(args.size),
        "seed": args.seed,
        "n_train": args.n_train,
        "n_test": args.n_test,
        "bins_per_channel": BINS,
        "miou_source_heldout": round(100 * _miou(_render("source", args.n_test, args.n_train, args), table), 1),
        "miou_target_val": round(100 * _miou(_render("target_val", args.n_test, 0, args), table), 1),
    }
    print(
        f"colour classifier (v{GENERATOR_VERSION}, profile {args.profile}, shift {args.shift}): "
        f"mIoU {rec['miou_source_heldout']} on held-out source, {rec['miou_target_val']} on target val"
    )
    records = []
    if args.out.is_file():
        records = [
            r
            for r in json.loads(args.out.read_text())
            if (r["generator_version"], r["profile"], r["shift"], r["size"])
            != (rec["generator_version"], rec["profile"], rec["shift"], rec["size"])
        ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(records + [rec], indent=1) + "\n")
    return rec


if __name__ == "__main__":
    main()
