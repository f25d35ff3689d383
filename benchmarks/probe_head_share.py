"""How much of a training step the decode head's gradient probe costs, on the papers' models.

GH over the decoder (``balancing.gh.params=decoder``) takes two gradient probes that reach only the
decode-head parameters, then one full backward of the weighted loss, so its cost model is

    ratio ~= 1 + 2 * t_probe / t_step,

with ``t_probe`` the time of ``torch.autograd.grad(loss, head parameters)`` (the head's part of the
backward graph) and ``t_step`` a forward + full backward. This script measures both on random-init
models and fixed inputs (median of ``--reps``), and prints the predicted ratio next to the head's
share of the parameters, so the measured decoder-GH ratios of ``bench_paper_models.py`` can be read
against it. Run: ``python benchmarks/probe_head_share.py --crop 256 --threads 1``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from run_all import bench_meta  # noqa: E402

MODELS = {
    "r101": ("DeepLabV2-R101", "gta2cs/deeplabv2_self_training"),
    "b5": ("MiT-B5 + DAFormer head", "gta2cs/daformer_self_training"),
}


def measure(config: str, crop: int, reps: int) -> dict:
    """``t_step`` (forward + full backward), ``t_probe`` (head-only gradient after a forward) and the
    head's parameter share of the model of ``config``, in seconds (medians)."""
    from balda.config import load_config, resolve_config
    from balda.models import build_model

    cfg = load_config(resolve_config(config))
    torch.manual_seed(0)
    model = build_model(replace(cfg.model, pretrained=None)).train()
    head = [p for p in model.decode_head.parameters() if p.requires_grad]
    x = torch.randn(1, 3, crop, crop)
    y = torch.randint(0, cfg.model.num_classes, (1, crop, crop))

    def loss_of():
        logits = model(x).logits
        return F.cross_entropy(F.interpolate(logits, size=(crop, crop), mode="bilinear"), y)

    steps, probes = [], []
    for i in range(reps + 1):
        t = time.perf_counter()
        loss = loss_of()
        loss.backward()
        dt = time.perf_counter() - t
        model.zero_grad(set_to_none=True)
        loss = loss_of()
        t = time.perf_counter()
        torch.autograd.grad(loss, head)
        dp = time.perf_counter() - t
        if i:  # the first repetition warms up
            steps.append(dt)
            probes.append(dp)
    n_head = sum(p.numel() for p in head)
    n_all = sum(p.numel() for p in model.parameters() if p.requires_grad)
    t_step, t_probe = statistics.median(steps), statistics.median(probes)
    return {
        "t_step": t_step,
        "t_probe": t_probe,
        "predicted_decoder_gh_ratio": 1 + 2 * t_probe / t_step,
        "head_param_share": n_head / n_all,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "head_share.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    res = {}
    for key in args.models:
        name, config = MODELS[key]
        r = measure(config, args.crop, args.reps)
        res[name] = r
        print(
            f"{name:<24} step {r['t_step']:.2f} s, head probe {r['t_probe']:.2f} s "
            f"-> decoder GH predicted {r['predicted_decoder_gh_ratio']:.2f}x (head: {100 * r['head_param_share']:.1f}% "
            f"of the parameters)",
            flush=True,
        )
    meta = bench_meta(torch.device("cpu"), crop=args.crop, batch=1, reps=args.reps)
    Path(args.out).write_text(json.dumps({"meta": meta, "models": res}, indent=1) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
