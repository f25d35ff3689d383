#!/usr/bin/env python
"""The GPU check, ready for the moment a GPU machine is available: one command, under 8 minutes.

Measures seconds per iteration and peak memory (``torch.cuda.max_memory_allocated``) of

* the DAFormer recipe: MiT-B5 + DAFormer head, 512x512 crops, batch 2 source + 2 target, rare class
  sampling (a data-side sampler: no step cost), ImageNet feature distance (a frozen MiT-B5), in
  fp32 and in bf16 (and bf16 + channels_last, and bf16 + torch.compile with ``--compile``);
* AdvEnt + GH on DeepLabV2-R101, CPSL stage 1 on DeepLabV2-R101 and self-training + GBW on MiT-B5,
  in bf16;

(random init, synthetic batches: timing does not depend on the weights), and writes them with the
GPU's name into the section *GPU* of ``benchmarks/RESULTS.md`` (+ ``benchmarks/results/gpu.json``).
Anchor: DAFormer reports 1.44 s/iter and 9.7 GB on an RTX 2080 Ti; the goal on an H100-class GPU is
<= 0.35 s/iter and <= 8 GB for the DAFormer step in bf16.

    python benchmarks/gpu_recipes.py [--steps 20] [--warmup 5] [--compile]

``--smoke`` runs every row's code path (config overrides, the feature-distance model, the CPSL
prepared folder, channels_last, the step, the RESULTS.md section) with small backbones (MiT-B0,
ResNet-18), 64x64 crops and one step, on ``--device cpu`` if asked: the test suite's check that
the script works before a GPU's minutes are spent on it. Its figures mean nothing and it writes
only where ``--markdown`` / ``--out`` point.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_paper_models import Stepper  # noqa: E402
from run_all import _commit, make_cpsl_prepared, peak_memory_mb, reset_peak_memory, write_section  # noqa: E402

ROWS = [
    # name, config, overrides, amp, feature distance
    ("DAFormer (MiT-B5) self-training, fp32", "gta2cs/daformer_self_training", [], "none", True),
    ("DAFormer (MiT-B5) self-training, bf16", "gta2cs/daformer_self_training", [], "bf16", True),
    (
        "DAFormer (MiT-B5) self-training, bf16 + channels_last",
        "gta2cs/daformer_self_training",
        ["train.channels_last=true"],
        "bf16",
        True,
    ),
    (
        "DAFormer (MiT-B5) self-training + GBW, bf16",
        "gta2cs/daformer_self_training",
        ["balancing.class_weights=gbw"],
        "bf16",
        True,
    ),
    (
        "DeepLabV2-R101 AdvEnt + GH, bf16",
        "gta2cs/deeplabv2_advent",
        ["balancing.combiner=gh", "data.crop=[512, 512]", "data.batch_source=2", "data.batch_target=2"],
        "bf16",
        False,
    ),
    ("DeepLabV2-R101 CPSL stage 1, bf16", "gta2cs/deeplabv2_cpsl", ["data.crop=[512, 512]"], "bf16", False),
]


def _imnet_weights(cfg, tmp: Path) -> str:
    """A frozen ImageNet model for the feature distance: a random MiT-B5 backbone saved to a file."""
    from balda.models import build_model

    path = tmp / "imnet_backbone.pth"
    torch.save(build_model(replace(cfg.model, pretrained=None)).backbone.state_dict(), path)
    return str(path)


#: ``--smoke``: the overrides that make every row small (applied after the row's own).
SMOKE = ["data.crop=[64, 64]"]


def run_row(name, config, over, amp, fdist, args, tmp: Path) -> dict:
    from balda.config import load_config, resolve_config

    device = torch.device(args.device)
    base = [
        "train.progress=false",
        "model.pretrained=null",
        "method.self_training.imnet_model=null",
        "data.crop=[512, 512]",
    ]
    cfg = load_config(resolve_config(config), base + over)
    if args.smoke:
        small = "mit_b0" if cfg.model.name == "daformer" else "resnet18"
        cfg = load_config(resolve_config(config), base + over + SMOKE + [f"model.backbone={small}"])
    if fdist:
        st = replace(cfg.method.self_training, imnet_model=_imnet_weights(cfg, tmp))
        cfg = replace(cfg, method=type(cfg.method)(name=cfg.method.name, self_training=st))
    cfg = replace(cfg, train=replace(cfg.train, amp=amp, compile=args.compile and "fp32" not in name))
    prepared = make_cpsl_prepared(cfg, device, tmp / f"cpsl_{len(name)}") if cfg.method.name == "cpsl" else None
    step = Stepper(cfg, device, prepared)
    if cfg.train.channels_last:
        step.model.to(memory_format=torch.channels_last)
        for b in step.batches:
            for part in b.values():
                part["image"] = part["image"].contiguous(memory_format=torch.channels_last)
    if cfg.train.compile:
        step.model.compile()
    for _ in range(args.warmup):
        step()
    reset_peak_memory(device)
    times = [step() for _ in range(args.steps)]
    return {
        "s_per_iter": statistics.median(times),
        "peak_gb": peak_memory_mb(device) / 1024,
        "amp": amp,
        "compile": cfg.train.compile,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="also torch.compile the bf16 rows")
    p.add_argument("--only", nargs="+", help="row names (substrings) to run")
    p.add_argument("--markdown", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu.json"))
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N; cpu only with --smoke")
    p.add_argument("--smoke", action="store_true", help="small backbones, 64x64 crops, 1 step: a check that it runs")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.warmup = 1, 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: this script measures the GPU recipes and has nothing to do here", file=sys.stderr)
        return 2
    if not args.device.startswith("cuda") and not args.smoke:
        print(f"--device {args.device}: the GPU figures are measured on cuda only (or run --smoke)", file=sys.stderr)
        return 2
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    results = {}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for row in ROWS:
            if args.only and not any(o in row[0] for o in args.only):
                continue
            results[row[0]] = r = run_row(*row, args, Path(tmp))
            print(f"{row[0]:<56} {r['s_per_iter']:.3f} s/iter  {r['peak_gb']:.2f} GB", flush=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    gpu = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else args.device
    if args.smoke:
        gpu += " (--smoke: small backbones, 64x64, 1 step; not a measurement)"
    meta = {
        "gpu": gpu,
        "commit": _commit(),
        "torch": torch.__version__,
        "steps": args.steps,
        "date": time.strftime("%Y-%m-%d"),
        "seconds": round(time.time() - t0),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": results}, indent=1))
    lines = [
        "## GPU",
        "",
        f"Measured by `python benchmarks/gpu_recipes.py` on **{gpu}** at commit `{meta['commit']}` "
        f"(torch {meta['torch']}), {meta['date']}: median of {args.steps} steps after {args.warmup} warm-up "
        "steps, "
        "512x512 crops, batch 2+2, random init. DAFormer's anchor: 1.44 s/iter and 9.7 GB on an RTX 2080 Ti; the "
        "goal on an H100-class GPU: <= 0.35 s/iter and <= 8 GB in bf16.",
        "",
        "| recipe | s/iter | peak memory (GB) |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {r['s_per_iter']:.3f} | {r['peak_gb']:.2f} |" for k, r in results.items()]
    write_section(Path(args.markdown), "## GPU", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
