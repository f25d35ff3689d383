#!/usr/bin/env python
"""Acquisition time of an active-learning round vs a plain inference pass over the same images.

Issue #8's target: one acquisition round over the target set costs <= 1.3x an inference pass over it.
For each model this script times, on the same images:

* the *inference pass*: :func:`balda.engine.evaluation.evaluate` (whole-image inference at label
  resolution + confusion matrix), after a 2-image warm-up;
* RIPU rounds 1 and 2 of 2 (5% budget, region mode): scoring, parallel greedy selection, oracle
  annotation, masks written to disk (round 2 also reads the round-1 masks back);
* CBDA rounds 1 and 2: round 1 also pays the *prior pass* (predicted-class frequencies on
  ``--prior-images`` images; a fixed cost: 64 images are 2% of Cityscapes' 2975), round 2 takes its
  class weights from the labelled set and pays no prior pass, like every later round.

Each round's time is split into ``inference_s`` (forward passes), ``selection_s`` (scores + greedy
selection), ``annotate_s`` (oracle + PNG masks + manifest). The ratio the target is about is
``round time / inference pass``.

Models: ``small`` (the embedded benchmark's CPU model, optionally with ``--checkpoint`` weights:
realistic prediction maps), ``deeplabv2-r101`` (RIPU's model, frozen BN) and ``daformer-b5``, all random
init unless a checkpoint is given. Images: the target train split of ``--data`` (the embedded
benchmark, 128x256) when it exists, else random images of ``--size``. Results go to
``benchmarks/results/acquire.json`` and the ``## Acquisition`` section of ``benchmarks/RESULTS.md``.

    python benchmarks/bench_acquire.py --models small deeplabv2-r101 --images 40
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from run_all import RandomTarget, _sync, bench_meta, time_inference, write_results_json, write_section  # noqa: E402

MODELS = {
    "small": None,  # the embedded benchmark's model (configs/streets/_base.yaml)
    "deeplabv2-r101": dict(name="deeplabv2", backbone="resnet101", freeze_bn=True),
    "daformer-b5": dict(name="daformer", backbone="mit_b5"),
}


class Subset:
    def __init__(self, ds, n: int):
        self.ds, self.names = ds, list(ds.names)[:n]

    def __len__(self):
        return len(self.names)

    def load(self, i):
        return self.ds.load(i)


def target_images(cfg, data: Path, n: int, size) -> tuple[object, str]:
    from balda.data.datasets import build_dataset

    if (data / "target" / "leftImg8bit" / "train").is_dir():
        ds = build_dataset(replace(cfg.data.target, root=str(data / "target"), labelled=True))
        return Subset(ds, n), f"{data} target train (first {min(n, len(ds))})"
    return RandomTarget(n, *size), f"random {size[0]}x{size[1]}"


def time_model(cfg, model, ds, device, prior_images: int) -> dict:
    from balda.active.acquire import acquire_round
    from balda.active.annotator import LabelStore, OracleAnnotator

    t_inf = time_inference(model, ds, cfg, device)
    out = {"images": len(ds), "inference_s": t_inf, "images_per_s": len(ds) / t_inf, "rounds": {}}
    for sel in ("ripu", "cbda"):
        acfg = replace(cfg.active, enabled=True, selection=sel, mode="region", budget=0.05, rounds=[0.3, 0.5])
        with tempfile.TemporaryDirectory() as tmp:
            store = LabelStore(Path(tmp))
            for r in range(2):
                _sync(device)
                t = time.perf_counter()
                st = acquire_round(
                    model,
                    ds,
                    store,
                    acfg,
                    r,
                    2,
                    cfg.data.mean,
                    cfg.data.std,
                    device,
                    OracleAnnotator(ds),
                    progress=False,
                    prior_images=prior_images,
                )
                _sync(device)
                dt = time.perf_counter() - t
                out["rounds"][f"{sel}_{r + 1}"] = {
                    "time_s": dt,
                    "vs_inference": dt / t_inf,
                    "inference_s": st["inference_s"],
                    "selection_s": st["selection_s"],
                    "annotate_s": st["annotate_s"],
                    "weights_from": st.get("weights_from"),
                }
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["small", "deeplabv2-r101"], choices=sorted(MODELS))
    p.add_argument("--checkpoint", help="weights of the small model (a run's final.pt), for realistic predictions")
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--prior-images", type=int, default=64)
    p.add_argument("--data", default=str(ROOT / "data" / "streets"))
    p.add_argument("--size", type=int, nargs=2, default=[128, 256], help="random images when --data is absent")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "acquire.json"))
    p.add_argument("--markdown", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    args = p.parse_args(argv)

    from balda.config import ModelConfig, load_config, resolve_config
    from balda.models import build_model
    from balda.models.weights import load_segmentor

    device = torch.device(args.device)
    cfg = load_config(resolve_config("streets/active_cbda"), [])
    ds, images = target_images(cfg, Path(args.data), args.images, args.size)
    results = {}
    for name in args.models:
        model = build_model(cfg.model if MODELS[name] is None else ModelConfig(**MODELS[name]))
        if name == "small" and args.checkpoint:
            load_segmentor(model, args.checkpoint)
        model = model.to(device).eval()
        results[name] = r = time_model(cfg, model, ds, device, args.prior_images)
        print(
            f"{name}: inference {r['inference_s']:.2f} s ({r['images_per_s']:.1f} img/s); "
            + ", ".join(f"{k} {v['vs_inference']:.2f}x" for k, v in r["rounds"].items()),
            flush=True,
        )
    meta = bench_meta(device, images=images, prior_images=args.prior_images, checkpoint=args.checkpoint)
    write_results_json(args.out, meta, "models", results)
    lines = [
        "## Acquisition",
        "",
        f"Measured by `python benchmarks/bench_acquire.py` at commit `{meta['commit']}` on {meta['device']} "
        f"({meta['machine']}, torch {meta['torch']}, {meta['threads']} threads), {meta['date']}, over "
        f"{images}; small model weights: {args.checkpoint or 'random init'}. One round = 5% / 2 rounds "
        f"of region acquisition; CBDA round 1 includes the prior pass over {args.prior_images} images "
        "(capped at the set size). Target: a round <= 1.3x the inference pass.",
        "",
        "| model | inference pass (s) | round | time (s) | vs inference | forward (s) | scores + selection (s) "
        "| annotation (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        for k, v in r["rounds"].items():
            lines.append(
                f"| {name} | {r['inference_s']:.2f} | {k.replace('_', ' round ')} | {v['time_s']:.2f} | "
                f"{v['vs_inference']:.2f}x | {v['inference_s']:.2f} | {v['selection_s']:.2f} | "
                f"{v['annotate_s']:.2f} |"
            )
    write_section(Path(args.markdown), "## Acquisition", "\n".join(lines) + "\n")
    print(f"\nwritten to {args.markdown} and {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
