#!/usr/bin/env python
"""Performance benchmarks of balda, written to ``benchmarks/RESULTS.md`` (+ ``results/perf.json``).

Measured in one process, on the same batches, with warm-up steps excluded (median of timed steps):

* training step time of every strategy, and of every balancing module relative to its base
  (GBW overhead target < 5% of the step; GH <= 1.7x with all shared parameters; CPSL stage 1
  <= 1.5x a self-training step);
* evaluation throughput (images/s, whole-image inference + confusion matrix);
* peak memory (CUDA: ``torch.cuda.max_memory_allocated``; CPU: peak RSS of the process).

``--preset streets`` (default) uses the embedded benchmark's model and crops on the CPU;
``--preset real`` uses 512x512 crops, batch 2+2, DeepLabV2-R101 and DAFormer-MiT-B5 (random init:
timing does not depend on the weights) and is meant for a GPU (``--device cuda --amp bf16``), to
compare with DAFormer's published 9.7 GB / ~1.4 s per iteration on an RTX 2080 Ti.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


#: The tracked paths whose changes make a measurement's commit ``+dirty``.
_CODE = ("src", "configs", "benchmarks", ":(exclude)benchmarks/results", "pyproject.toml")


def _commit() -> str:
    """The short commit of the checkout, with ``+dirty`` when tracked code (``src``, ``configs``,
    ``benchmarks`` but its results, ``pyproject.toml``) differs from it: the figures were then measured
    with code no commit holds. Result files a running grid rewrites do not count."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        return (
            (head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no", "--", *_CODE) else ""))
            if head
            else "unknown"
        )
    except OSError:
        return "unknown"


def bench_meta(device: torch.device, **extra) -> dict:
    """What every benchmark records beside its figures: commit, device name (the GPU's, or the CPU
    architecture and core count), threads, torch, date and load average, plus ``extra``."""
    import os
    import platform
    import time

    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})"
    return {
        "commit": _commit(),
        "device": dev,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        **extra,
    }


def write_results_json(out, meta: dict, key: str, rows: dict) -> None:
    """Write ``{"meta": meta, key: rows}`` to ``out`` (its folder created)."""
    import json

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, key: rows}, indent=1))


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window: CUDA's peak statistics, or on Linux the process's peak
    resident set (``VmHWM``, reset by writing 5 to ``/proc/self/clear_refs``), so the peak of the
    steps that follow is not the peak of building the model."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory (MB) since :func:`reset_peak_memory`: ``max_memory_allocated`` on CUDA; on CPU the
    peak resident set ``VmHWM`` (Linux), else the process's maximum RSS so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_batch(cfg, device, gen):
    """A (source, target) batch of the configured crop and batch sizes with random labels."""
    h, w = cfg.data.crop
    K = cfg.model.num_classes

    def part(b, labelled=True):
        lab = torch.randint(0, K, (b, h, w), generator=gen)
        lab[:, : h // 16] = 255
        return {
            "image": torch.randn(b, 3, h, w, generator=gen).to(device),
            "label": (lab if labelled else torch.full_like(lab, 255)).to(device),
            "index": torch.arange(b).to(device),
            "crop_box": torch.tensor([[0.0, 0.0, 1.0, 1.0]] * b).to(device),
            "flip": torch.zeros(b, dtype=torch.bool).to(device),
        }

    return {"source": part(cfg.data.batch_source), "target": part(cfg.data.batch_target, labelled=False)}


def time_strategy(cfg, device, steps: int, warmup: int, batches, prepared=None) -> dict:
    """Median step time (forward, combiner backward, optimiser, post-step hook) of ``cfg``'s method."""
    from balda.balancing.class_weights import build_weighting
    from balda.balancing.combine import build_combiner
    from balda.engine.optim import build_optimizer
    from balda.methods import build_strategy
    from balda.models import build_model

    torch.manual_seed(0)
    model = build_model(replace(cfg.model, pretrained=None)).to(device)
    if cfg.method.name == "cpsl":
        cfg = replace(cfg, method=replace(cfg.method, cpsl=replace(cfg.method.cpsl, prepared=str(prepared))))
    strategy = build_strategy(cfg, model, build_weighting(cfg.balancing, cfg.model.num_classes, None)).to(device)
    extra = strategy.optimized_with_model()
    opt, sched = build_optimizer(model, cfg.optim, 10**6, extra=extra)
    params = [p for g in opt.param_groups for p in g["params"]]
    shared = [
        p
        for p in (model.decode_head.parameters() if cfg.balancing.gh.params == "decoder" else model.parameters())
        if p.requires_grad
    ]
    combiner = build_combiner(cfg.balancing)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.amp) if device.type == "cuda" else None
    times = []
    reset_peak_memory(device)
    model.train()
    for i in range(warmup + steps):
        batch = batches[i % len(batches)]
        _sync(device)
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            out = strategy.compute_losses(model, batch, i)
        opt.zero_grad(set_to_none=True)
        combiner.backward(out, params, shared)
        opt.step()
        sched.step()
        strategy.after_step(model, i)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return {"step_s": statistics.median(times), "peak_mb": peak_memory_mb(device)}


def make_cpsl_prepared(cfg, device, tmp: Path) -> Path:
    """A prepared CPSL folder for timing: soft labels of random images from a random model."""
    from balda.methods.cpsl.prepare import prepare_cpsl
    from balda.models import build_model

    class Fake:
        def __init__(self, n, h, w):
            self.n, self.h, self.w = n, h, w
            self.names = [f"img{i:03d}" for i in range(n)]

        def __len__(self):
            return self.n

        def load(self, i):
            g = torch.Generator().manual_seed(i)
            img = (torch.rand(self.h, self.w, 3, generator=g) * 255).to(torch.uint8).numpy()
            return img, None

    h, w = cfg.data.crop
    model = build_model(replace(cfg.model, pretrained=None)).to(device).eval()
    prepare_cpsl(
        model,
        Fake(max(cfg.data.batch_target, 4), h, w),
        tmp,
        cfg.data.mean,
        cfg.data.std,
        device,
        pseudo_stride=cfg.method.cpsl.pseudo_stride,
        progress=False,
    )
    return tmp


def presets(name: str):
    from balda.config import load_config, resolve_config

    if name == "streets":
        base = ["train.progress=false"]
        st = ("streets/self_training", [])
        rows = [
            ("source_only", "streets/source_only", [], None),
            ("self_training", *st, None),
            (
                "self_training+gbw",
                st[0],
                ["balancing.class_weights=gbw", "balancing.gbw.mode=scale_free"],
                "self_training",
            ),
            ("self_training+gh (all)", st[0], ["balancing.combiner=gh"], "self_training"),
            (
                "self_training+gh (decoder)",
                st[0],
                ["balancing.combiner=gh", "balancing.gh.params=decoder"],
                "self_training",
            ),
            ("advent", "streets/advent", [], None),
            ("advent+gbw", "streets/advent", ["balancing.class_weights=gbw"], "advent"),
            ("advent+gh (all)", "streets/advent", ["balancing.combiner=gh"], "advent"),
            (
                "advent+gh (decoder)",
                "streets/advent",
                ["balancing.combiner=gh", "balancing.gh.params=decoder"],
                "advent",
            ),
            ("advent+gh++ (all)", "streets/advent", ["balancing.combiner=gh++"], "advent"),
            ("minent", "streets/minent", [], None),
            ("minent+gh (all)", "streets/minent", ["balancing.combiner=gh"], "minent"),
            ("cpsl (stage 1)", "streets/cpsl", [], "self_training"),
        ]
        return [(n, load_config(resolve_config(c), base + o), b) for n, c, o, b in rows]
    real = [
        "train.progress=false",
        "data.crop=[512, 512]",
        "data.batch_source=2",
        "data.batch_target=2",
        "model.pretrained=null",
        "method.self_training.imnet_model=null",
    ]
    rows = [
        ("deeplabv2-r101 source_only", "gta2cs/deeplabv2_source_only", [], None),
        ("deeplabv2-r101 advent", "gta2cs/deeplabv2_advent", [], None),
        (
            "deeplabv2-r101 advent+gh (all)",
            "gta2cs/deeplabv2_advent",
            ["balancing.combiner=gh"],
            "deeplabv2-r101 advent",
        ),
        ("daformer-b5 self_training", "gta2cs/daformer_self_training", [], None),
        (
            "daformer-b5 self_training+gbw",
            "gta2cs/daformer_self_training",
            ["balancing.class_weights=gbw"],
            "daformer-b5 self_training",
        ),
        (
            "daformer-b5 self_training+gh (decoder)",
            "gta2cs/daformer_self_training",
            ["balancing.combiner=gh", "balancing.gh.params=decoder"],
            "daformer-b5 self_training",
        ),
    ]
    return [(n, load_config(resolve_config(c), real + o), b) for n, c, o, b in rows]


class RandomTarget:
    """``n`` random RGB images with random trainId labels of size ``h x w`` (the dataset interface
    of evaluation and acquisition: ``names``, ``len``, ``load(i)``)."""

    def __init__(self, n: int, h: int, w: int):
        self.names = [f"c_000000_{i:06d}" for i in range(n)]
        self.h, self.w = h, w

    def __len__(self):
        return len(self.names)

    def load(self, i):
        import numpy as np

        rng = np.random.default_rng(i)
        return (
            rng.integers(0, 255, (self.h, self.w, 3), dtype=np.uint8),
            rng.integers(0, 19, (self.h, self.w)).astype(np.uint8),
        )


def time_inference(model, ds, cfg, device) -> float:
    """Seconds of one evaluation pass over all of ``ds`` (inference at label resolution + confusion
    matrix), after a 2-image warm-up: the "plain inference pass" the benchmarks compare with."""
    from balda.engine.evaluation import evaluate

    evaluate(model, ds, replace(cfg.eval, max_images=2), cfg.data.mean, cfg.data.std, device=device, progress=False)
    _sync(device)
    t = time.perf_counter()
    evaluate(model, ds, replace(cfg.eval, max_images=None), cfg.data.mean, cfg.data.std, device=device, progress=False)
    _sync(device)
    return time.perf_counter() - t


def time_eval(cfg, device, n_images: int) -> dict:
    """Evaluation throughput (whole-image inference + confusion matrix) over ``n_images`` random images
    of twice the crop size. Acquisition vs inference is measured by ``bench_acquire.py``."""
    from balda.models import build_model

    h, w = cfg.data.crop[0] * 2, cfg.data.crop[1] * 2
    ds = RandomTarget(n_images, h, w)
    model = build_model(replace(cfg.model, pretrained=None)).to(device).eval()
    t_eval = time_inference(model, ds, cfg, device)
    return {"eval_images_per_s": n_images / t_eval, "eval_image_hw": [h, w]}


def write_section(md: Path, marker: str, section: str) -> None:
    """Replace the section that starts with the heading ``marker`` in ``md`` (or append it)."""
    old = md.read_text() if md.exists() else "# balda performance benchmarks\n\n"
    if marker in old:
        head, _, rest = old.partition(marker)
        nxt = rest.find("\n## ")
        old = head + (rest[nxt + 1 :] if nxt >= 0 else "")
    md.write_text(old.rstrip() + "\n\n" + section)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=["streets", "real"], default="streets")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--eval-images", type=int, default=20)
    p.add_argument("--only", nargs="*", help="row names to run (default all)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "perf.json"))
    p.add_argument("--markdown", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    args = p.parse_args(argv)
    device = torch.device(args.device)
    rows = presets(args.preset)
    if args.only:
        rows = [r for r in rows if r[0] in args.only]
    gen = torch.Generator().manual_seed(0)
    import tempfile

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        prepared = None
        for name, cfg, base in rows:
            cfg = replace(cfg, train=replace(cfg.train, amp=args.amp))
            batches = [synthetic_batch(cfg, device, gen) for _ in range(2)]
            if cfg.method.name == "cpsl" and prepared is None:
                prepared = make_cpsl_prepared(cfg, device, Path(tmp) / "cpsl")
            r = time_strategy(cfg, device, args.steps, args.warmup, batches, prepared)
            if base and base in results:
                r["vs_base"] = r["step_s"] / results[base]["step_s"]
                r["base"] = base
            results[name] = r
            print(
                f"{name:<42} {r['step_s'] * 1000:9.1f} ms/step"
                + (f"  x{r['vs_base']:.2f} vs {base}" if "vs_base" in r else ""),
                flush=True,
            )
        first = rows[0][1]
        extra = time_eval(first, device, args.eval_images) if args.preset == "streets" else {}
    meta = {
        "commit": _commit(),
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "preset": args.preset,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "amp": args.amp,
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "steps": results, "throughput": extra}, indent=1))
    lines = [
        f"## Performance ({args.preset} preset)",
        "",
        f"Measured by `python benchmarks/run_all.py --preset {args.preset} --device {args.device}` at commit "
        f"`{meta['commit']}` on {meta['device']} ({meta['machine']}, torch {meta['torch']}, "
        f"{meta['threads']} threads, amp {args.amp}), {meta['date']}. Median of {args.steps} steps after "
        f"{args.warmup} warm-up steps; same synthetic batches for every row.",
        "",
        "| strategy | s/iter | vs base | peak memory (MB; CPU: peak RSS during the steps) |",
        "|---|---|---|---|",
    ]
    for name, r in results.items():
        vs = f"{r['vs_base']:.2f}x {r['base']}" if "vs_base" in r else "–"
        lines.append(f"| {name} | {r['step_s']:.3f} | {vs} | {r['peak_mb']:.0f} |")
    if extra:
        lines += [
            "",
            f"Evaluation: {extra['eval_images_per_s']:.1f} images/s at {extra['eval_image_hw'][0]}x"
            f"{extra['eval_image_hw'][1]} (whole-image inference + confusion matrix). Acquisition "
            "rounds vs an inference pass: `bench_acquire.py`, section *Acquisition*.",
        ]
    section = "\n".join(lines) + "\n"
    write_section(Path(args.markdown), f"## Performance ({args.preset} preset)", section)
    print(f"\nwritten to {args.markdown} and {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
