#!/usr/bin/env python
"""What gradient harmonization costs on the image-classification bases: interleaved A/B step timing.

For each base of the GH paper's classification setting (DANN, CDAN+E, MCD with its A/B/C phases,
MinEnt) the base (A) and the base with GH or GH++ (B) are built as real trainers (the digits
configs; the same phases, frozen parameters and combiner as ``balda train``), warmed up, then timed
alternately A B A B ... on the same fixed synthetic batches; the figure is the median of the
per-pair ratios B/A with its inter-quartile range (see ``bench_paper_models.py``). Target (issue
#17): +GH <= 1.5x its base.

Models: ``digits`` (the digits CNN of the embedded benchmark, 14 px crops, batch 32+32) and ``r50``
(ResNet-50 + bottleneck 256 at 224 px, the Office/VisDA setting, random init; batch 8+8 on a CPU,
``--batch`` to change it).

    python benchmarks/bench_classification.py [--models digits r50] [--pairs 5] [--device cpu]

Writes ``benchmarks/results/classification.json`` and the section *Classification* of
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_paper_models import interleaved  # noqa: E402
from run_all import _sync, bench_meta, write_results_json, write_section  # noqa: E402

#: name -> (label, overrides, image side, default CPU batch)
MODELS = {
    "digits": ("digits CNN (w16), 14 px", [], 14, 32),
    "r50": ("ResNet-50 + bottleneck, 224 px", ["model.backbone=resnet50"], 224, 8),
}
BASES = ("dann", "cdan_e", "mcd", "minent")
VARIANTS = (("+gh", "balancing.combiner=gh"), ("+gh++", "balancing.combiner=gh++"))
TARGET = 1.5


class TrainerStep:
    """One full trainer iteration (every phase) of a digits config on a fixed batch."""

    def __init__(self, config: str, overrides: list[str], data: Path, out: Path, side: int, batch: int, device):
        from balda.config import load_config, resolve_config
        from balda.engine.trainer import Trainer

        cfg = load_config(
            resolve_config(config),
            [
                f"out_dir={out}",
                "train.progress=false",
                "train.tensorboard=false",
                f"train.device={device.type}",
                f"data.source.root={data / 'source/train.txt'}",
                f"data.target.root={data / 'target/train.txt'}",
                f"data.val.root={data / 'target/test.txt'}",
                *overrides,
            ],
        )
        torch.manual_seed(0)
        self.trainer = Trainer(cfg)
        self.device = device
        g = torch.Generator().manual_seed(0)

        def part():
            return {
                "image": torch.randn(batch, 3, side, side, generator=g),
                "label": torch.randint(0, cfg.model.num_classes, (batch,), generator=g),
                "index": torch.arange(batch),
            }

        self.batches = [{"source": part(), "target": part()} for _ in range(2)]
        self.i = 0

    def __call__(self) -> float:
        batch = self.batches[self.i % 2]
        _sync(self.device)
        t = time.perf_counter()
        self.trainer.train_step(batch)
        _sync(self.device)
        self.i += 1
        return time.perf_counter() - t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--bases", nargs="+", default=list(BASES), choices=list(BASES))
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int, default=None, help="source and target images per step (default per model)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "classification.json"))
    p.add_argument("--markdown", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    from balda.data.digits import generate_digits

    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "digits"
        generate_digits(data, n_per_class=4)
        for model in args.models:
            label, over, side, cpu_batch = MODELS[model]
            batch = args.batch or (32 if device.type == "cuda" else cpu_batch)
            extra = [*over, f"data.crop=[{side}, {side}]", f"data.batch_source={batch}", f"data.batch_target={batch}"]
            for base in args.bases:
                a = TrainerStep(f"digits/{base}", extra, data, Path(tmp) / "a", side, batch, device)
                for suffix, o in VARIANTS:
                    b = TrainerStep(f"digits/{base}", [*extra, o], data, Path(tmp) / "b", side, batch, device)
                    r = interleaved(a, b, args.pairs, args.warmup)
                    r.update(model=label, row=f"{base}{suffix}", base=base, target=TARGET, batch=batch)
                    results[f"{model} {base}{suffix}"] = r
                    print(
                        f"{label:<32} {base + suffix:<14} {r['ratio']:.2f}x {base} "
                        f"(IQR {r['ratio_q1']:.2f}-{r['ratio_q3']:.2f}; {r['a_s']:.3f} s vs {r['b_s']:.3f} s)",
                        flush=True,
                    )
    meta = bench_meta(device, pairs=args.pairs)
    dev = meta["device"]
    write_results_json(args.out, meta, "rows", results)
    lines = [
        "## Classification",
        "",
        f"Measured by `python benchmarks/bench_classification.py --device {args.device} --pairs {args.pairs}` at "
        f"commit `{meta['commit']}` on {dev} ({meta['threads']} threads, torch {meta['torch']}, load average "
        f"{meta['load_average']:.1f}), {meta['date']}: one full trainer iteration (MCD: steps A, B and 4 x C) on "
        f"fixed synthetic batches, interleaved A/B, median of {args.pairs} per-pair ratios (IQR). Target: +GH "
        f"<= {TARGET}x its base.",
        "",
        "| model | variant | batch | base s/step | variant s/step | ratio (IQR) | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results.values():
        ok = "ok" if r["ratio"] <= r["target"] else "over"
        lines.append(
            f"| {r['model']} | {r['row']} | {r['batch']}+{r['batch']} | {r['a_s']:.3f} | {r['b_s']:.3f} | "
            f"{r['ratio']:.2f}x ({r['ratio_q1']:.2f}-{r['ratio_q3']:.2f}) | <= {r['target']}x {ok} |"
        )
    write_section(Path(args.markdown), "## Classification", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
