"""Micro-benchmark of GBW class weighting (specs/gbw.md, "Cost").

Times one GBW call (closed-form statistic + simplex projection, :class:`balda.balancing.class_weights.GBW`)
against a plain ``F.cross_entropy`` forward + backward on the same logits, and prints the ratio. The
cross-entropy is only the loss head of a training step (the network's forward/backward is far larger),
so ``ratio`` is a pessimistic proxy for the spec's "< 5% of a training step" target.

Also timed, for reference: the projection alone, and the spec's expanded form of the statistic
(``sum s^2 p^2 - 2 sum_{y=c} s^2 p + sum_{y=c} s^2`` with softmax, gather and scatter_add).

    python benchmarks/bench_gbw.py --device cpu --threads 1
    python benchmarks/bench_gbw.py --device cuda --out benchmarks/results/gbw_cuda.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from balda.balancing.class_weights import GBW, project_simplex

DEFAULT_SHAPES = ["2x19x512x512", "8x19x128x256"]


def parse_shape(text: str) -> tuple[int, int, int, int]:
    parts = tuple(int(p) for p in text.lower().split("x"))
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"shape must be BxKxHxW, got {text!r}")
    return parts  # type: ignore[return-value]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(fn, device: torch.device, warmup: int, repeats: int) -> dict:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "repeats": repeats}


@torch.no_grad()
def expanded_statistic(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """The spec's expansion of ||G_{:,c}||^2 (reference for cost only; it cancels when p_y ~ 1)."""
    B, K = logits.shape[:2]
    p = torch.softmax(logits.float(), dim=1)
    valid = (labels != ignore_index) & (labels >= 0) & (labels < K)
    lab = torch.where(valid, labels, torch.zeros_like(labels))
    n = torch.zeros(K, dtype=torch.long, device=logits.device)
    n.scatter_add_(0, lab.reshape(-1), valid.reshape(-1).long())
    s2 = (valid.float() / (n.float()[lab] + 1)).square()
    t1 = torch.einsum("bkn,bn->k", p.square().reshape(B, K, -1), s2.reshape(B, -1))
    p_y = p.gather(1, lab.unsqueeze(1)).squeeze(1)
    t2 = torch.zeros(K, device=logits.device).scatter_add_(0, lab.reshape(-1), (s2 * p_y).reshape(-1))
    t3 = n.float() / (n.float() + 1).square()
    return (t1 - 2 * t2 + t3).clamp_min(0).sqrt()


def run_shape(shape, device, dtype, warmup, repeats, seed) -> dict:
    B, K, H, W = shape
    gen = torch.Generator(device="cpu").manual_seed(seed)
    logits = (torch.randn(B, K, H, W, generator=gen) * 2).to(device=device, dtype=dtype)
    labels = torch.randint(0, K, (B, H, W), generator=gen)
    labels[torch.rand(B, H, W, generator=gen) < 0.05] = 255
    labels = labels.to(device)

    gbw = GBW(K, mode="scale_free").to(device)
    leaf = logits.detach().clone().requires_grad_(True)

    def ce_fwd_bwd():
        leaf.grad = None
        F.cross_entropy(leaf.float(), labels, ignore_index=255).backward()

    g = torch.rand(K, device=device)
    out = {
        "shape": list(shape),
        "dtype": str(dtype).replace("torch.", ""),
        "gbw": bench(lambda: gbw(logits, labels), device, warmup, repeats),
        "cross_entropy_fwd_bwd": bench(ce_fwd_bwd, device, warmup, repeats),
        "projection_only": bench(lambda: project_simplex(g, float(K)), device, warmup, repeats),
        "expanded_statistic_reference": bench(lambda: expanded_statistic(logits, labels), device, warmup, repeats),
    }
    out["ratio_gbw_over_ce"] = out["gbw"]["median_ms"] / out["cross_entropy_fwd_bwd"]["median_ms"]
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda if available)")
    ap.add_argument("--out", default="benchmarks/results/gbw.json", help="JSON file for the results")
    ap.add_argument(
        "--shapes",
        nargs="+",
        type=parse_shape,
        default=[parse_shape(s) for s in DEFAULT_SHAPES],
        help="logit shapes BxKxHxW (default: %(default)s)",
    )
    ap.add_argument(
        "--dtype", choices=["float32", "float16", "bfloat16"], default="float32", help="dtype of the logits"
    )
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    dtype = getattr(torch, args.dtype)

    results = []
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} dtype={args.dtype}")
    print(f"{'shape':>16} {'gbw ms':>9} {'ce f+b ms':>10} {'ratio':>7} {'proj ms':>8} {'expanded ms':>12}")
    for shape in args.shapes:
        r = run_shape(shape, device, dtype, args.warmup, args.repeats, args.seed)
        results.append(r)
        print(
            f"{'x'.join(map(str, shape)):>16} {r['gbw']['median_ms']:9.2f} "
            f"{r['cross_entropy_fwd_bwd']['median_ms']:10.2f} {r['ratio_gbw_over_ce']:7.3f} "
            f"{r['projection_only']['median_ms']:8.3f} {r['expanded_statistic_reference']['median_ms']:12.2f}"
        )

    report = {
        "benchmark": "gbw",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
