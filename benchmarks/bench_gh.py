"""Step time of the loss combiners (sum vs gradient harmonization), specs/gh.md "Cost".

One step = forward of a source and a target batch through a small conv segmentor, the combiner's
backward (task CE vs target entropy alignment), and an SGD step. Configurations are timed
round-robin (to spread machine-load drift evenly) and the median step time of each is reported
with its ratio to ``sum``. Two layouts are measured: ``separate`` source and target forwards (each
loss back-propagates through its own branch only, so the two gradient passes of ``gh (all)`` cost
about one backward), and ``joint`` (one forward of the concatenated batch, so each gradient pass
traverses the whole graph)::

    python benchmarks/bench_gh.py --device cpu --iters 20
    python benchmarks/bench_gh.py --device cuda --size 512 --width 64 --batch 4
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from balda.balancing.combine import HarmonizingCombiner, SumCombiner, shared_parameters
from balda.methods.base import StepOutput

CONFIGS = {
    "sum": lambda: SumCombiner(),
    "gh (all)": lambda: HarmonizingCombiner("gh", shared_mode="all"),
    "gh (decoder)": lambda: HarmonizingCombiner("gh", shared_mode="decoder"),
    "gh++ (all)": lambda: HarmonizingCombiner("gh++", shared_mode="all"),
    "gh++exact (all)": lambda: HarmonizingCombiner("gh++exact", shared_mode="all"),
    "pcgrad (all)": lambda: HarmonizingCombiner("pcgrad", shared_mode="all"),
}


def conv_bn(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallSegmentor(nn.Module):
    """Backbone (stride 8) -> decode head (two 3x3 convs + 1x1 classifier)."""

    def __init__(self, num_classes=19, width=32):
        super().__init__()
        w = width
        self.backbone = nn.Sequential(
            conv_bn(3, w, 2),
            conv_bn(w, w),
            conv_bn(w, 2 * w, 2),
            conv_bn(2 * w, 2 * w),
            conv_bn(2 * w, 4 * w, 2),
            conv_bn(4 * w, 4 * w),
        )
        self.decode_head = nn.Sequential(conv_bn(4 * w, 2 * w), conv_bn(2 * w, 2 * w), nn.Conv2d(2 * w, num_classes, 1))

    def forward(self, x):
        logits = self.decode_head(self.backbone(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def make_step(model, combiner, opt, batch, params, shared, joint=False):
    def step():
        opt.zero_grad(set_to_none=True)
        if joint:  # one forward of the concatenated batch: both losses share the whole graph
            ls, lt = model(torch.cat([batch["xs"], batch["xt"]])).chunk(2)
        else:  # separate forwards (AdvEnt, DACS, DAFormer): each loss only reaches its own branch
            ls = model(batch["xs"])
            lt = model(batch["xt"])
        task = F.cross_entropy(ls, batch["ys"], ignore_index=255)
        p = lt.softmax(1)
        ent = -(p * torch.log(p + 1e-30)).sum(1).mean()
        out = StepOutput(
            losses={"source.ce": task, "target.ent": ent}, weights={"target.ent": 0.01}, task=("source.ce",)
        )
        logs = combiner.backward(out, params, shared)
        opt.step()
        return logs

    return step


def run_layout(base, batch, args, sync, joint):
    steps, times = {}, {}
    for name, make in CONFIGS.items():
        model = copy.deepcopy(base)
        comb = make()
        params = [p for p in model.parameters() if p.requires_grad]
        shared = shared_parameters(model, getattr(comb, "shared_mode", "all"))
        opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
        steps[name] = make_step(model, comb, opt, batch, params, shared, joint)
        times[name] = []
        for _ in range(args.warmup):
            steps[name]()
        sync()
    last_logs = {}
    for _ in range(args.iters):
        for name, step in steps.items():
            sync()
            t0 = time.perf_counter()
            logs = step()
            sync()
            times[name].append(time.perf_counter() - t0)
            last_logs[name] = {k: float(v) for k, v in logs.items()}
    ref = statistics.median(times["sum"])
    results = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        results[name] = {
            "median_ms": 1e3 * med,
            "mean_ms": 1e3 * statistics.fmean(ts),
            "min_ms": 1e3 * min(ts),
            "ratio_vs_sum": med / ref,
            "last_logs": last_logs[name],
        }
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="benchmarks/results/gh.json")
    ap.add_argument("--iters", type=int, default=20, help="timed steps per configuration")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--classes", type=int, default=19)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layout", choices=["separate", "joint", "both"], default="both")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    base = SmallSegmentor(args.classes, args.width).to(device)
    b, s = args.batch, args.size
    batch = {
        "xs": torch.randn(b, 3, s, s, device=device),
        "xt": torch.randn(b, 3, s, s, device=device),
        "ys": torch.randint(0, args.classes, (b, s, s), device=device),
    }
    layouts = ["separate", "joint"] if args.layout == "both" else [args.layout]
    results = {layout: run_layout(base, batch, args, sync, layout == "joint") for layout in layouts}
    n_params = sum(p.numel() for p in base.parameters())
    n_head = sum(p.numel() for p in base.decode_head.parameters())
    report = {
        "device": str(device),
        "device_name": (
            torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
        ),
        "torch": torch.__version__,
        "threads": args.threads,
        "batch": b,
        "size": s,
        "width": args.width,
        "classes": args.classes,
        "params": n_params,
        "head_params": n_head,
        "iters": args.iters,
        "warmup": args.warmup,
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    for layout, res in results.items():
        print(f"[{layout} forwards]")
        print(f"{'config':<18}{'median ms':>11}{'ratio':>8}")
        for name, r in res.items():
            print(f"{name:<18}{r['median_ms']:>11.1f}{r['ratio_vs_sum']:>8.2f}")
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
