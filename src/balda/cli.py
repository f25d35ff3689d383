"""The ``balda`` command line.

    balda train CONFIG [key=value ...] [--resume]      train a strategy (YAML config + overrides)
    balda eval RUN_OR_CKPT [--export DIR] [key=value]  evaluate a run or checkpoint on its val split
    balda generate streets --out DIR                   write the embedded two-domain benchmark
    balda demo                                         the main job: benchmark + methods + table + plots
    balda bench [--quick] [--seeds N] [--methods ...]  the results grid (resumable, one process per cell)
    balda configs                                      list the configs shipped with balda

CONFIG is a path to a YAML file or the name of a shipped config (``streets/self_training``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from balda.config import ConfigError, resolve_config, shipped_configs


def _cmd_train(args) -> int:
    from balda.config import load_config
    from balda.core import dist
    from balda.engine.trainer import train

    dist.init_from_env()
    try:
        cfg = load_config(resolve_config(args.config), args.overrides)
        metrics = train(cfg, resume=args.resume or False, progress=not args.no_progress)
    finally:
        dist.shutdown()
    if dist.is_main() and metrics is not None:
        print(metrics.format_table())
        print(f"\nrun written to {cfg.run_dir}")
    return 0


def _cmd_eval(args) -> int:
    import json

    from balda.config import config_from_dict
    from balda.core.checkpoint import load_checkpoint, load_model_weights, resolve_checkpoint
    from balda.data.datasets import build_dataset
    from balda.engine.evaluation import evaluate
    from balda.engine.trainer import resolve_device
    from balda.models import build_model

    ckpt_path = resolve_checkpoint(args.run, best=args.best)
    ckpt = load_checkpoint(ckpt_path)
    cfg = config_from_dict(ckpt["config"], str(ckpt_path))
    if args.overrides:
        from balda.config import merge_dicts, parse_overrides, to_dict

        cfg = config_from_dict(merge_dicts(to_dict(cfg), parse_overrides(args.overrides)), "command-line overrides")
    model = build_model(cfg.model)
    state = ckpt["model"]
    if args.teacher and "strategy" in ckpt:
        state = {k[len("teacher.") :]: v for k, v in ckpt["strategy"].items() if k.startswith("teacher.")} or state
    load_model_weights(model, state, ckpt_path)
    device = resolve_device(cfg.train.device)
    ds = build_dataset(cfg.data.val)
    metrics = evaluate(
        model.to(device),
        ds,
        cfg.eval,
        cfg.data.mean,
        cfg.data.std,
        device=device,
        export_dir=Path(args.export) if args.export else None,
        progress=not args.no_progress,
        num_classes=cfg.model.num_classes,
    )
    print(metrics.format_table())
    if args.json:
        Path(args.json).write_text(json.dumps(metrics.to_dict(), indent=1))
    return 0


def _cmd_generate(args) -> int:
    from balda.data.streets import generate_streets

    summary = generate_streets(
        Path(args.out),
        size=tuple(args.size),
        n_source=args.n_source,
        n_target_train=args.n_target_train,
        n_target_val=args.n_target_val,
        seed=args.seed,
        shift=args.shift,
        profile=args.profile,
        progress=not args.no_progress,
    )
    print(f"wrote the street benchmark to {args.out}")
    freqs = summary.get("class_frequencies") if isinstance(summary, dict) else None
    if freqs:
        from balda.data.labels import CLASS_NAMES

        doms = list(freqs)
        print(f"{'class':<14}" + "".join(f"{d:>16}" for d in doms))
        for c, name in enumerate(CLASS_NAMES):
            row = []
            for d in doms:
                f = freqs[d]
                v = f[name] if isinstance(f, dict) else f[c]
                row.append(f"{100 * v:>15.2f}%")
            print(f"{name:<14}" + "".join(row))
    return 0


def _cmd_demo(args) -> int:
    from balda.experiments import run_demo

    run_demo(
        out=Path(args.out),
        data=Path(args.data),
        quick=args.quick,
        methods=args.methods,
        seeds=args.seeds,
        progress=not args.no_progress,
        jobs=args.jobs,
    )
    return 0


def _cmd_bench(args) -> int:
    from balda.experiments import QUICK_BENCH_METHODS, entries, run_grid

    catalog = entries()
    if args.list:
        for name, e in catalog.items():
            warm = f"  (starts from {e.warmup})" if e.warmup else ""
            print(f"{name:<30} {e.config} {' '.join(e.overrides)}{warm}")
        return 0
    methods = args.methods or list(QUICK_BENCH_METHODS if args.quick else catalog)
    unknown = [m for m in methods if m not in catalog]
    if unknown:
        raise ConfigError(f"--methods: unknown method(s) {unknown}; see `balda bench --list`")
    summary = run_grid(
        methods,
        range(args.seeds),
        Path(args.data),
        Path(args.out),
        quick=args.quick,
        subprocess_mode=not args.in_process,
        progress=not args.no_progress,
        extra=args.overrides,
        jobs=args.jobs,
    )
    if summary:
        print(summary["markdown"])
        print(f"results in {args.out} ({summary['seconds']:.0f} s)")
        if args.readme:
            from balda.experiments import write_readme_section

            cmd = "balda bench " + " ".join(
                a for a in sys.argv[2:] if not a.startswith("--readme") and a != args.readme
            )
            write_readme_section(Path(args.readme), Path(args.out), cmd, commit=args.commit)
            print(f"results section of {args.readme} updated")
    return 0


def _cmd_configs(args) -> int:
    for name in shipped_configs():
        print(name)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="balda", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser(
        "train",
        help="train a strategy from a YAML config",
        description="Train from CONFIG (a YAML path or a shipped config name) with dotted "
        "key=value overrides, e.g. `balda train streets/self_training "
        "train.iters=2000 balancing.class_weights=gbw`. Under torchrun every rank "
        "runs this same command.",
    )
    t.add_argument("config", help="YAML path or shipped config name (see `balda configs`)")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (values parsed as YAML)")
    t.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="CKPT",
        help="continue from <run>/last.pt (or the given checkpoint) with identical results",
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser(
        "eval",
        help="evaluate a run or checkpoint on its validation split",
        description="Evaluate RUN_OR_CKPT (a run folder: final.pt, or best.pt with --best; or a "
        "checkpoint file) with the config saved in it; overrides such as "
        "eval.mode=slide or data.val.root=... change the protocol or the data.",
    )
    e.add_argument("run", metavar="RUN_OR_CKPT")
    e.add_argument("overrides", nargs="*", metavar="key=value")
    e.add_argument("--best", action="store_true", help="use best.pt instead of final.pt")
    e.add_argument("--teacher", action="store_true", help="evaluate the EMA teacher stored in the checkpoint")
    e.add_argument("--export", metavar="DIR", help="write Cityscapes labelIds and colour PNGs of the predictions")
    e.add_argument("--json", metavar="FILE", help="write the metrics as JSON")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=_cmd_eval)

    g = sub.add_parser("generate", help="generate a dataset")
    gsub = g.add_subparsers(dest="what", required=True, metavar="WHAT")
    s = gsub.add_parser(
        "streets", help="the embedded two-domain street benchmark (GTA5-format source, Cityscapes-format target)"
    )
    s.add_argument("--out", default="data/streets", help="output folder (default: data/streets)")
    s.add_argument("--size", type=int, nargs=2, default=[128, 256], metavar=("H", "W"))
    s.add_argument("--n-source", type=int, default=600)
    s.add_argument("--n-target-train", type=int, default=300)
    s.add_argument("--n-target-val", type=int, default=100)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--shift",
        type=float,
        default=0.65,
        help="severity of the domain shift: 0 = identical domains, 1 = the full source style "
        "(default: %(default)s, the calibrated benchmark)",
    )
    s.add_argument("--profile", default="cityscapes", help="class-prior profile")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_cmd_generate)

    d = sub.add_parser(
        "demo",
        help="the main job: generate the benchmark, train and compare the methods",
        description="Generate the embedded benchmark if missing, train every available strategy "
        "on it, evaluate on the target val split, print a table of target mIoU and "
        "per-class IoU and write plots (default <= 10 minutes on 2 CPU cores).",
    )
    d.add_argument("--out", default="runs/demo", help="where runs, table and plots go (default: runs/demo)")
    d.add_argument("--data", default="data/streets", help="benchmark folder (generated if missing)")
    d.add_argument("--quick", action="store_true", help="a much shorter run (smoke test)")
    d.add_argument("--methods", nargs="*", default=None, help="subset of demo methods")
    d.add_argument("--seeds", type=int, default=1)
    d.add_argument("--jobs", type=int, default=None, help="cells run at once (default 2 on >= 2 cores)")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=_cmd_demo)

    b = sub.add_parser(
        "bench",
        help="run the method grid on the embedded benchmark (results table)",
        description="Train a grid of methods x seeds on the embedded benchmark, each cell in its "
        "own process, skipping cells already finished (an interrupted grid resumes), "
        "and write summary.md / summary.json / runs.csv and comparison plots.",
    )
    b.add_argument("overrides", nargs="*", metavar="key=value", help="overrides applied to every cell")
    b.add_argument("--out", default="results/streets", help="output folder (default: results/streets)")
    b.add_argument("--data", default="data/streets", help="benchmark folder (generated if missing)")
    b.add_argument("--methods", nargs="*", default=None, help="methods of the catalogue (see --list)")
    b.add_argument("--seeds", type=int, default=3)
    b.add_argument("--quick", action="store_true", help="few iterations and a small method set (smoke test)")
    b.add_argument("--in-process", action="store_true", help="run cells in this process (no subprocesses)")
    b.add_argument("--jobs", type=int, default=1, help="cells run at once (each with cores/jobs threads)")
    b.add_argument("--list", action="store_true", help="list the method catalogue and exit")
    b.add_argument("--readme", metavar="FILE", help="also write the table into FILE between the results markers")
    b.add_argument("--commit", help="commit the cells were trained at (default: the current HEAD)")
    b.add_argument("--no-progress", action="store_true")
    b.set_defaults(func=_cmd_bench)

    from balda.core.registry import CLI_COMMANDS

    for _, spec in CLI_COMMANDS.items():  # verbs registered by the method modules (``cpsl prepare``)
        spec.add(sub)

    c = sub.add_parser("configs", help="list the shipped configs")
    c.set_defaults(func=_cmd_configs)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"balda: config error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("balda: interrupted (resume with --resume)", file=sys.stderr)
        return 130
    except Exception as e:  # clear one-line errors for the known failure kinds
        from balda.core.checkpoint import CheckpointError

        known = (CheckpointError,)
        try:
            from balda.data.io import DataError

            known += (DataError,)
        except ImportError:  # pragma: no cover
            pass
        try:
            from balda.models.weights import WeightsError

            known += (WeightsError,)
        except ImportError:  # pragma: no cover
            pass
        from balda.engine.trainer import NonFiniteLossError

        known += (NonFiniteLossError,)
        if isinstance(e, known):
            print(f"balda: error: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
