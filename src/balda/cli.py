"""The balda command line.

  balda train CONFIG [key=value ...] [--resume [CKPT]]  train a strategy (YAML config + overrides)
  balda eval RUN [key=value ...] [--export DIR]         evaluate a run or checkpoint on its val split
  balda predict RUN INPUTS... --out DIR                 segment your own images, folders, globs, videos
  balda export RUN OUT                                  the run's weights as a plain torch.load file
  balda generate streets [--out DIR]                    write the embedded two-domain benchmark
  balda demo                                            the main job: benchmark, methods, table, plots
  balda bench [--seeds N] [--methods ...]               the results grid (resumable, one process a cell)
  balda configs                                         the shipped configs, one line each

CONFIG is a YAML file or the name of a shipped config (streets/self_training, gta2cs/...).
Overrides are dotted key=value pairs (train.iters=2000 balancing.class_weights=gbw); values are
read as YAML and converted to the type of the key. Options and overrides mix in any order.
Run `balda COMMAND --help` for a command's options.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from balda.config import CONFIG_ROOT, ConfigError, resolve_config, shipped_configs
from balda.core.errors import BaldaError

_HELP_FORMAT = argparse.ArgumentDefaultsHelpFormatter


# ---------------------------------------------------------------------------------------- commands
def _cmd_train(args) -> int:
    from balda.config import load_config
    from balda.core import dist
    from balda.engine.trainer import train

    if args.allow_changes and not args.resume:
        raise ConfigError("--allow-changes only applies with --resume")
    dist.init_from_env()
    try:
        cfg = load_config(resolve_config(args.config), args.overrides)
        resume = args.resume_from or args.resume
        metrics = train(cfg, resume=resume, progress=not args.no_progress, allow_changes=args.allow_changes or ())
    finally:
        dist.shutdown()
    if dist.is_main() and metrics is not None:
        print(metrics.format_table())
        print(f"\nrun written to {cfg.run_dir}")
    return 0


def _cmd_eval(args) -> int:
    import json

    from balda.engine.predict import evaluate_run

    metrics = evaluate_run(
        args.run,
        overrides=args.overrides,
        best=args.best,
        teacher=args.teacher,
        export_dir=args.export,
        progress=not args.no_progress,
    )
    print(metrics.format_table())
    if args.json:
        Path(args.json).write_text(json.dumps(metrics.to_dict(), indent=1))
    return 0


def _cmd_predict(args) -> int:
    from balda.engine.predict import predict

    preds = predict(
        args.run,
        args.inputs,
        out=args.out,
        formats=args.format,
        overlay=args.overlay,
        alpha=args.alpha,
        best=args.best,
        teacher=args.teacher,
        overrides=args.overrides,
        on_error=args.on_error,
        progress=not args.no_progress,
        device=args.device,
        keep=False,
    )
    print(f"{len(preds)} image(s) segmented; outputs in {args.out}")
    return 0


def _cmd_export(args) -> int:
    from balda.core.checkpoint import export_weights

    path = export_weights(args.run, args.out, best=args.best)
    print(f"weights written to {path} (torch.load(path) works with the default weights_only=True)")
    return 0


def _cmd_generate(args) -> int:
    from balda.data.labels import CLASS_NAMES
    from balda.data.streets import generate_streets

    summary = generate_streets(
        Path(args.out),
        size=tuple(args.size),
        source_size=None if args.source_size is None else tuple(args.source_size),
        target_size=None if args.target_size is None else tuple(args.target_size),
        source_format=args.source_format,
        quirks=args.quirks,
        n_source=args.n_source,
        n_target_train=args.n_target_train,
        n_target_val=args.n_target_val,
        seed=args.seed,
        shift=args.shift,
        profile=args.profile,
        progress=not args.no_progress,
    )
    print(f"wrote the street benchmark to {args.out}")
    freqs = summary.get("class_frequencies") or {}
    if freqs:
        doms = list(freqs)
        print(f"{'class':<14}" + "".join(f"{d:>16}" for d in doms))
        for name in CLASS_NAMES:
            print(f"{name:<14}" + "".join(f"{100 * freqs[d][name]:>15.2f}%" for d in doms))
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
        iters=args.iters,
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
    streets = [n for n, e in catalog.items() if e.benchmark == "streets"]
    methods = args.methods or list(QUICK_BENCH_METHODS if args.quick else streets)
    unknown = [m for m in methods if m not in catalog]
    if unknown:
        raise ConfigError(f"--methods: unknown method(s) {unknown}; see `balda bench --list`")
    summary = run_grid(
        methods,
        range(args.seeds),
        None if args.data is None else Path(args.data),
        None if args.out is None else Path(args.out),
        quick=args.quick,
        subprocess_mode=not args.in_process,
        progress=not args.no_progress,
        extra=args.overrides,
        jobs=args.jobs,
        seeds_of=_more_seeds(args.more_seeds),
    )
    if summary:
        print(summary["markdown"])
        print(f"results in {summary['out']} ({summary['seconds']:.0f} s)")
        if args.readme:
            from balda.experiments import write_readme_section

            cmd = "balda bench " + " ".join(shown_bench_args(args.argv))
            out = Path(summary["out"])
            write_readme_section(Path(args.readme), out, cmd, commit=args.commit, section=out.name)
            print(f"results section of {args.readme} updated")
    return 0


def _more_seeds(spec: list[str] | None) -> dict[str, range]:
    """``--more-seeds N M1 M2 ...`` as ``{M1: range(N), M2: range(N), ...}``."""
    if not spec:
        return {}
    if len(spec) < 2 or not spec[0].isdigit() or int(spec[0]) < 1:
        raise ConfigError(f"--more-seeds: expected a seed count then methods (`--more-seeds 5 advent`), got {spec}")
    return {m: range(int(spec[0])) for m in spec[1:]}


def shown_bench_args(argv: list[str]) -> list[str]:
    """The ``balda bench`` arguments the README shows as the command that reproduces a grid: without
    the options that do not change its results (``--readme FILE``, ``--commit C``, which the block
    states separately, ``--no-progress``)."""
    shown, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--readme", "--commit"):
            skip = True
        elif not (a.startswith(("--readme=", "--commit=")) or a == "--no-progress"):
            shown.append(a)
    return shown


def config_description(path: Path) -> str:
    """The first comment line of a shipped config (what it is, and the paper figure it aims at)."""
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("#"):
            return line.lstrip("# ").rstrip()
        if line:
            break
    return ""


def _cmd_configs(args) -> int:
    names = shipped_configs()
    width = max((len(n) for n in names), default=0)
    for name in names:
        print(f"{name:<{width}}  {config_description(CONFIG_ROOT / f'{name}.yaml')}")
    return 0


# ----------------------------------------------------------------------------------------- parsers
def _parser(prog: str, help: str, description: str = "") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"balda {prog}", description=description or help, formatter_class=_HELP_FORMAT)
    p.help_line = help  # type: ignore[attr-defined]
    return p


def _train_parser() -> argparse.ArgumentParser:
    p = _parser(
        "train",
        "train a strategy from a YAML config",
        "Train from CONFIG (a YAML path or a shipped config name, see `balda configs`) with dotted "
        "key=value overrides, e.g. `balda train streets/self_training train.iters=2000 "
        "balancing.class_weights=gbw`. Under torchrun every rank runs this same command.",
    )
    p.add_argument("config", help="YAML path or shipped config name")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (values read as YAML)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from <run>/last.pt with identical results (`--resume CKPT` or `--resume=CKPT`: "
        "from that checkpoint file or run folder)",
    )
    p.add_argument("--resume-from", metavar="CKPT", default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--allow-changes",
        nargs="+",
        metavar="KEY",
        default=None,
        help="with --resume: keys (or sections) whose change from the checkpoint's config is accepted, "
        "applied and recorded in <run>/changes.json",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    p.set_defaults(func=_cmd_train)
    return p


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN_OR_CKPT", help="a run folder (its final.pt), a checkpoint or an exported file")
    p.add_argument("--best", action="store_true", help="use best.pt instead of final.pt")
    p.add_argument("--teacher", action="store_true", help="use the EMA teacher stored in the checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _eval_parser() -> argparse.ArgumentParser:
    p = _parser(
        "eval",
        "evaluate a run or checkpoint on its validation split",
        "Evaluate RUN_OR_CKPT with the config saved in it; overrides such as eval.mode=slide or "
        "data.val.root=... change the protocol or the data.",
    )
    _run_options(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the saved config")
    p.add_argument(
        "--export",
        metavar="DIR",
        help=(
            "write the predictions: Cityscapes labelIds and colour PNGs (semantic), COCO-panoptic PNGs and "
            "JSON (panoptic), and metrics.json"
        ),
    )
    p.add_argument("--json", metavar="FILE", help="write the metrics as JSON")
    p.set_defaults(func=_cmd_eval)
    return p


def _predict_parser() -> argparse.ArgumentParser:
    from balda.engine.predict import FORMATS

    p = _parser(
        "predict",
        "segment your own images, folders, globs or videos with a trained run",
        "Segment INPUTS (image files, folders searched recursively, glob patterns, video files read frame "
        "by frame) with the run's model and inference protocol (eval.mode whole at eval.size, or slide "
        "with eval.crop / eval.stride; change them with overrides). Writes <out>/<name>_<format>.png; "
        "video frames go to <out>/<video>/frame_NNNNNN_<format>.png.",
    )
    _run_options(p)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, folders, globs or videos")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--format",
        nargs="+",
        default=["color"],
        choices=FORMATS,
        help="outputs: Cityscapes colours, trainIds, Cityscapes labelIds, overlay on the input",
    )
    p.add_argument("--overlay", action="store_true", help="also write the colours blended over the input")
    p.add_argument("--alpha", type=float, default=0.5, help="opacity of the overlay colours")
    p.add_argument(
        "--on-error",
        choices=("raise", "skip"),
        default="raise",
        help="an unreadable input stops the command, or is logged and skipped",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: the run's train.device)")
    p.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        metavar="key=value",
        default=[],
        help="overrides of the saved config, e.g. --set eval.mode=slide",
    )
    p.set_defaults(func=_cmd_predict)
    return p


def _export_parser() -> argparse.ArgumentParser:
    p = _parser(
        "export",
        "write a run's model as a plain weights file",
        "Write RUN_OR_CKPT's model (state dict + model config + run config) to OUT, a file torch.load "
        "opens with its default weights_only=True (a training checkpoint also pickles the optimiser "
        "and RNG states). balda eval / predict and model.init accept it.",
    )
    p.add_argument("run", metavar="RUN_OR_CKPT")
    p.add_argument("out", metavar="OUT", help="file to write, e.g. model.pt")
    p.add_argument("--best", action="store_true", help="export best.pt instead of final.pt")
    p.set_defaults(func=_cmd_export)
    return p


def _generate_parser() -> argparse.ArgumentParser:
    from balda.data.streets import DEFAULT_SHIFT, PROFILES, SOURCE_FORMATS

    p = _parser(
        "generate streets",
        "generate the embedded two-domain street benchmark",
        "Write the procedural benchmark: a GTA5- or SYNTHIA-format source and a Cityscapes-format target "
        "(train and val), deterministic from --seed, with meta.json and sample pages. A complete folder "
        "generated with the same parameters is reused.",
    )
    p.add_argument("--out", default="data/streets", help="output folder")
    p.add_argument(
        "--size", type=int, nargs=2, default=[128, 256], metavar=("H", "W"), help="image size of both domains"
    )
    p.add_argument(
        "--source-size",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="source image size (default: --size), e.g. 1052 1914 (GTA5) or 760 1280 (SYNTHIA)",
    )
    p.add_argument(
        "--target-size",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="target image size (default: --size), e.g. 1024 2048 (Cityscapes)",
    )
    p.add_argument(
        "--source-format",
        default="gta5",
        choices=SOURCE_FORMATS,
        help="source layout: gta5 (images/, labels/) or synthia (RAND_CITYSCAPES/RGB, GT/LABELS: 16-bit PNGs)",
    )
    p.add_argument(
        "--quirks",
        action="store_true",
        help="like the real GTA5 download: two source images two rows shorter and one label a few pixels "
        "smaller than its image (the loader resizes it with a warning)",
    )
    p.add_argument("--n-source", type=int, default=600, help="source images")
    p.add_argument("--n-target-train", type=int, default=300, help="target train images")
    p.add_argument("--n-target-val", type=int, default=100, help="target val images")
    p.add_argument("--seed", type=int, default=0, help="seed of the whole benchmark")
    p.add_argument(
        "--shift",
        type=float,
        default=DEFAULT_SHIFT,
        help="domain shift: 0 = identical domains, 1 = the full source style (the default is the calibrated benchmark)",
    )
    p.add_argument(
        "--profile",
        default="cityscapes",
        choices=PROFILES,
        help="class priors and gap: cityscapes (long tail), balanced (lighter tail), hard (adds "
        "class-swapping palettes)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_generate)
    return p


def _demo_parser() -> argparse.ArgumentParser:
    from balda.experiments.catalog import DEMO_ITERS

    p = _parser(
        "demo",
        "the main job: generate the benchmark, train and compare the methods",
        "Generate the embedded benchmark if missing, train the demo methods on it (two at a time), "
        "evaluate them on the target val split, print a table of target mIoU, rare-class recall and "
        "per-class IoU and write plots. Interrupted, it resumes where it stopped.",
    )
    p.add_argument("--out", default="runs/demo", help="where runs, table and plots go")
    p.add_argument("--data", default="data/streets", help="benchmark folder (generated if missing)")
    p.add_argument("--quick", action="store_true", help="a much shorter run (smoke test)")
    p.add_argument("--methods", nargs="+", default=None, help="subset of the bench catalogue")
    p.add_argument("--seeds", type=int, default=1, help="seeds per method")
    p.add_argument("--iters", type=int, default=DEMO_ITERS, help="iterations per run (the bench recipe has 1000)")
    p.add_argument("--jobs", type=int, default=None, help="cells run at once (None: 2 on >= 2 cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)
    return p


def _bench_parser() -> argparse.ArgumentParser:
    p = _parser(
        "bench",
        "run the method grid on the embedded benchmark (results tables)",
        "Train a grid of methods x seeds, each cell in its own process, skipping cells already finished "
        "(an interrupted grid resumes), and write summary.md / summary.json / runs.csv (mean +- std, "
        "paired differences to each method's control with 95%% intervals) and comparison plots.",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides applied to every cell")
    p.add_argument(
        "--out", default=None, help="output folder (default results/<benchmark>: streets, digits or streets_panoptic)"
    )
    p.add_argument("--data", default=None, help="benchmark folder, generated if missing (default data/<benchmark>)")
    p.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help="methods of the catalogue (see --list), all of one benchmark: the street ones, digits/* or panoptic/*",
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds per method (0..N-1)")
    p.add_argument(
        "--more-seeds",
        nargs="+",
        metavar=("N", "METHOD"),
        help="N seeds (0..N-1) for the METHODs that follow instead of --seeds, e.g. `--more-seeds 5 advent "
        "advent+gh`: more seeds where a difference is within one std; each method is summarised over the "
        "seeds it has",
    )
    p.add_argument("--quick", action="store_true", help="few iterations and a small method set (smoke test)")
    p.add_argument("--in-process", action="store_true", help="run cells in this process (no subprocesses)")
    p.add_argument("--jobs", type=int, default=1, help="cells run at once (each with cores/jobs threads)")
    p.add_argument("--list", action="store_true", help="list the method catalogue and exit")
    p.add_argument(
        "--readme",
        metavar="FILE",
        help="also write the table into FILE between the markers `results:<out folder name>:begin/end` "
        "(appended if FILE has none yet)",
    )
    p.add_argument("--commit", help="commit the cells were trained at (default: the current HEAD)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_bench)
    return p


def _configs_parser() -> argparse.ArgumentParser:
    p = _parser("configs", "list the shipped configs with what each is")
    p.set_defaults(func=_cmd_configs)
    return p


#: Built-in commands: name -> parser factory (registered commands are added from the registry).
COMMANDS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "train": _train_parser,
    "eval": _eval_parser,
    "predict": _predict_parser,
    "export": _export_parser,
    "generate streets": _generate_parser,
    "demo": _demo_parser,
    "bench": _bench_parser,
    "configs": _configs_parser,
}


def commands() -> dict[str, Callable[[], argparse.ArgumentParser]]:
    """Every command: the built-in ones and those registered by modules (``cpsl prepare``)."""
    from balda.core.registry import CLI_COMMANDS

    out = dict(COMMANDS)
    for name, spec in CLI_COMMANDS.items():
        out[name] = spec.add
    return out


def _top_help(cmds: dict) -> str:
    lines = [__doc__.split("\n\n")[0], "", "commands:"]
    for name, make in cmds.items():
        lines.append(f"  {name:<18} {getattr(make(), 'help_line', '')}")
    lines += ["", "options: -v/--verbose (debug logging), --version", "", __doc__.split("\n\n", 2)[2].strip()]
    return "\n".join(lines)


def _split_resume(args: list[str]) -> list[str]:
    """``--resume PATH`` / ``--resume=PATH`` -> ``--resume --resume-from PATH``. The token after
    ``--resume`` is its path only when it is no option, no ``key=value`` override, and a ``*.pt``
    file name or an existing file or folder; otherwise ``--resume`` is the plain flag."""
    out, i = [], 0
    while i < len(args):
        a = args[i]
        if a.startswith("--resume="):
            out += ["--resume", "--resume-from", a.split("=", 1)[1]]
        elif a == "--resume" and i + 1 < len(args):
            nxt = args[i + 1]
            if not nxt.startswith("-") and "=" not in nxt and (nxt.endswith(".pt") or Path(nxt).exists()):
                out += ["--resume", "--resume-from", nxt]
                i += 1
            else:
                out.append(a)
        else:
            out.append(a)
        i += 1
    return out


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = False
    while argv and argv[0] in ("-v", "--verbose", "--version"):
        if argv.pop(0) == "--version":
            from balda import __version__

            print(f"balda {__version__}")
            return 0
        verbose = True
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cmds = commands()
    words = [a for a in argv[:2] if not a.startswith("-")]
    name = next((n for n in (" ".join(words[:2]), words[0] if words else "") if n in cmds), None)
    if name is None:
        print(_top_help(cmds))
        if not argv or argv[0] in ("-h", "--help"):
            return 0
        prefix = [n for n in cmds if words and n.startswith(words[0] + " ")]
        hint = f"; did you mean {' or '.join(prefix)}?" if prefix else ""
        print(f"\nbalda: unknown command {' '.join(words) or argv[0]!r}{hint}", file=sys.stderr)
        return 2
    rest = argv[len(name.split()) :]
    parser = cmds[name]()
    try:
        args = parser.parse_intermixed_args(_split_resume(rest) if name == "train" else rest)
    except SystemExit as e:  # argparse printed the usage and the error
        return int(e.code or 0)
    args.argv = rest
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"balda: config error: {e}", file=sys.stderr)
        return 2
    except BaldaError as e:  # bad data, weights, checkpoint, non-finite loss: one line naming the file
        print(f"balda: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("balda: interrupted (resume with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
