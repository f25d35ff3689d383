"""Experiment grids on the embedded benchmark: ``balda demo`` and ``balda bench``.

A *method* of the catalogue is a shipped config plus overrides (``self_training+gbw`` is
``streets/self_training`` with ``balancing.class_weights=gbw``). A *cell* is a (method, seed)
pair; its run folder is ``<out>/<method>_s<seed>``, and a cell whose ``final_metrics.json``
exists is never re-run, so an interrupted grid resumes where it stopped. The summary table
(mean +- std over seeds of mIoU, min-class IoU, mean recall of the rarest target classes,
per-class IoU) is written as Markdown, CSV and JSON together with comparison plots.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from balda.data.labels import CLASS_NAMES

log = logging.getLogger("balda.experiments")

#: method name -> (shipped config, overrides). Order = table order.
CATALOG: dict[str, tuple[str, tuple[str, ...]]] = {
    "source_only": ("streets/source_only", ()),
    "oracle": ("streets/oracle", ()),
    "self_training": ("streets/self_training", ()),
    "advent": ("streets/advent", ()),
    "minent": ("streets/minent", ()),
    "source_only+gbw": ("streets/source_only", ("balancing.class_weights=gbw", "balancing.gbw.mode=scale_free")),
    "self_training+gbw": ("streets/self_training", ("balancing.class_weights=gbw", "balancing.gbw.mode=scale_free")),
    "self_training+gbw_faithful": ("streets/self_training", ("balancing.class_weights=gbw",
                                                             "balancing.gbw.mode=faithful")),
    "self_training+inverse_freq": ("streets/self_training", ("balancing.class_weights=inverse_freq",)),
    "self_training+class_balanced": ("streets/self_training", ("balancing.class_weights=class_balanced",)),
    "advent+gbw": ("streets/advent", ("balancing.class_weights=gbw", "balancing.gbw.mode=scale_free")),
    "minent+gbw": ("streets/minent", ("balancing.class_weights=gbw", "balancing.gbw.mode=scale_free")),
    "advent+gh": ("streets/advent", ("balancing.combiner=gh",)),
    "advent+gh++": ("streets/advent", ("balancing.combiner=gh++",)),
    "minent+gh": ("streets/minent", ("balancing.combiner=gh",)),
    "self_training+gh": ("streets/self_training", ("balancing.combiner=gh",)),
    "self_training+gbw+gh": ("streets/self_training", ("balancing.class_weights=gbw", "balancing.gbw.mode=scale_free",
                                                       "balancing.combiner=gh")),
    # #4's investigation of self-training: per-pixel confidence masks, and a two-stage run from the
    # source-only model (model.init) against its control, source-only continued for as long
    "self_training@pixel": ("streets/self_training", ("method.self_training.pseudo_weight=pixel",)),
    "self_training@warm": ("streets/self_training", ()),
    # DAFormer's rare class sampling on the source (min_pixels scaled from 1280x720 to 128x256)
    "self_training+rcs": ("streets/self_training", ("data.rcs.enabled=true", "data.rcs.min_pixels=100")),
    "source_only+rcs": ("streets/source_only", ("data.rcs.enabled=true", "data.rcs.min_pixels=100")),
    "source_only@warm": ("streets/source_only", ()),
    "cpsl": ("streets/cpsl", ()),
    "cpsl+gbw": ("streets/cpsl", ("balancing.class_weights=gbw", "balancing.gbw.mode=scale_free")),
    **{f"{sel}@{b}%": (f"streets/active_{sel}", (f"active.budget={b / 100}",))
       for b in (2, 5, 10) for sel in ("ripu", "cbda")},
    # CBDA's two parts alone (the paper's ablation): class-balanced scores with RIPU's per-image
    # budget, and the dynamic global selection with RIPU's unweighted scores
    **{f"cbda_{part}@{b}%": ("streets/active_cbda", (f"active.budget={b / 100}", off))
       for b in (2, 5, 10) for part, off in (("balance", "active.cbda.dynamic=false"),
                                            ("dynamic", "active.cbda.class_balance=false"))},
}

#: Methods that start from another method's finished run of the same seed: CPSL from its AdvEnt
#: warm-up (then ``balda cpsl prepare``), the ``@warm`` variants from its final weights (``model.init``).
WARMUP = {"cpsl": "advent", "cpsl+gbw": "advent", "self_training@warm": "source_only",
          "source_only@warm": "source_only"}

#: The full grid of ``balda bench``.
DEFAULT_BENCH_METHODS = tuple(CATALOG)
#: ``balda bench --quick``.
QUICK_BENCH_METHODS = ("source_only", "oracle", "self_training", "self_training+gbw", "advent", "advent+gh")
#: What ``balda demo`` trains by default (<= 10 minutes on 2 CPU cores).
DEMO_METHODS = ("source_only", "oracle", "self_training", "advent", "minent", "cbda@5%")


@dataclass(frozen=True)
class Cell:
    method: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method.replace('+', '-').replace('@', '_')}_s{self.seed}"


def cell_overrides(cell: Cell, data: Path, out: Path, quick: bool = False, extra: Iterable[str] = ()) -> list[str]:
    if cell.method not in CATALOG:
        raise ValueError(f"unknown method {cell.method!r}; known: {', '.join(CATALOG)}")
    _, over = CATALOG[cell.method]
    o = [f"name={cell.name}", f"out_dir={out}", f"train.seed={cell.seed}",
         f"data.source.root={data / 'source'}", f"data.target.root={data / 'target'}",
         f"data.val.root={data / 'target'}", *over]
    if quick:
        o += ["train.iters=40", "train.ckpt_every=20", "train.log_every=10", "eval.max_images=16"]
    return o + list(extra)


def cell_config(cell: Cell, data: Path, out: Path, quick: bool = False, extra: Iterable[str] = ()):
    from balda.cli import resolve_config
    from balda.config import load_config

    return load_config(resolve_config(CATALOG[cell.method][0]), cell_overrides(cell, data, out, quick, extra))


def prepare_warmup(cell: Cell, data: Path, out: Path, quick: bool, extra: Iterable[str], subprocess_mode: bool,
                   progress: bool) -> list[str]:
    """Finish the warm-up cell and return the override that starts ``cell`` from it: for CPSL, run
    ``balda cpsl prepare`` on it (``method.cpsl.prepared``); otherwise ``model.init`` = its final weights."""
    warm = Cell(WARMUP[cell.method], cell.seed)
    run_cell(warm, data, out, quick, extra, subprocess_mode, progress)
    if CATALOG[cell.method][0] != "streets/cpsl":
        return [f"model.init={out / warm.name / 'final.pt'}"]
    prepared = out / f"cpsl_prepared_s{cell.seed}"
    if not (prepared / "manifest.json").is_file():
        from balda.methods.cpsl_prepare import prepare_from_checkpoint

        over = [f"data.target.root={data / 'target'}", f"data.val.root={data / 'target'}",
                "method.cpsl.pseudo_stride=2"]
        prepare_from_checkpoint(out / warm.name, prepared, overrides=over, progress=progress)
    return [f"method.cpsl.prepared={prepared}"]


def is_done(cell: Cell, out: Path) -> bool:
    return (out / cell.name / "final_metrics.json").is_file()


def run_cell(cell: Cell, data: Path, out: Path, quick: bool = False, extra: Iterable[str] = (),
             subprocess_mode: bool = False, progress: bool = True) -> dict:
    """Train and evaluate one cell (resuming its run if interrupted); return its final metrics."""
    if not is_done(cell, out) and cell.method in WARMUP:
        extra = list(extra) + prepare_warmup(cell, data, out, quick, extra, subprocess_mode, progress)
    if not is_done(cell, out):
        if subprocess_mode:
            cmd = [sys.executable, "-m", "balda.cli", "train", CATALOG[cell.method][0],
                   *cell_overrides(cell, data, out, quick, extra), "--resume"]
            if not progress:
                cmd.append("--no-progress")
            env = dict(os.environ)
            (out / cell.name).mkdir(parents=True, exist_ok=True)
            with open(out / cell.name / "stdout.log", "a") as f:
                r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
            if r.returncode != 0:
                raise RuntimeError(f"cell {cell.name} failed (exit {r.returncode}); see {out / cell.name / 'stdout.log'}")
        else:
            from balda.engine.trainer import train

            train(cell_config(cell, data, out, quick, extra), resume=True, progress=progress)
    return json.loads((out / cell.name / "final_metrics.json").read_text())


def ensure_benchmark(data: Path, progress: bool = True) -> None:
    """Generate the default street benchmark in ``data`` unless a complete one is there already. A
    complete benchmark generated with other parameters (``balda generate streets --size ...``) is
    used as it is, never regenerated over."""
    from balda.data.streets import generate_streets, load_streets_meta, streets_exists

    meta = load_streets_meta(data)
    if meta is not None and meta.get("complete"):
        if not streets_exists(data):
            log.info("using the street benchmark in %s as it is (parameters %s)", data, meta.get("params"))
        return
    log.info("generating the street benchmark in %s", data)
    generate_streets(data, progress=progress)


# ------------------------------------------------------------------------------------ summary
def _per_class(m: dict, key: str = "iou") -> np.ndarray:
    pc = m.get("per_class", {})
    return np.array([(pc.get(c, {}) or {}).get(key, np.nan) if isinstance(pc.get(c), dict) else np.nan
                     for c in CLASS_NAMES], dtype=float)


def _rarest(results: list[dict], k: int) -> list[int]:
    """The k rarest target classes by ground-truth pixels of the val confusion matrix."""
    conf = np.asarray(results[0]["confusion"], dtype=float)
    gt = conf.sum(1)
    present = np.flatnonzero(gt > 0)
    return [int(c) for c in present[np.argsort(gt[present])][:k]]


def summarize(out: Path, methods: Iterable[str], seeds: Iterable[int], rare_k: int = 6) -> dict:
    """Aggregate the finished cells into ``summary.{md,csv,json}`` and comparison plots."""
    rows = {}
    runs = []
    for method in methods:
        ms = []
        for s in seeds:
            p = out / Cell(method, s).name / "final_metrics.json"
            if p.is_file():
                m = json.loads(p.read_text())
                ms.append(m)
                runs.append({"method": method, "seed": s, **{k: m.get(k) for k in ("miou", "min_iou", "acc")}})
        if ms:
            rows[method] = ms
    if not rows:
        return {}
    rare = _rarest(next(iter(rows.values())), rare_k)
    table = {}
    curves: dict[str, tuple[list, list]] = {}
    for method, ms in rows.items():
        gh_conf, gh_angle, kl, min_share = [], [], [], []
        loss_by_step: dict[int, list[float]] = {}
        for s in seeds:
            from balda.engine.logger import read_metrics

            active = read_metrics(out / Cell(method, s).name, "active")
            if active and active[-1].get("active/kl_uniform") is not None:  # labelled set after the last round
                kl.append(float(active[-1]["active/kl_uniform"]))
                min_share.append(100 * float(active[-1]["active/min_class_share"]))
            recs = read_metrics(out / Cell(method, s).name, "train")
            conf = [r["gh/conflict"] for r in recs if r.get("gh/conflict") is not None]
            ang = [r["gh/angle"] for r in recs if r.get("gh/angle") is not None]
            if conf:
                gh_conf.append(100 * float(np.mean(conf)))
                gh_angle.append(float(np.mean(ang)))
            for r in recs:
                if r.get("loss/source.ce") is not None:
                    loss_by_step.setdefault(r["step"], []).append(r["loss/source.ce"])
        if loss_by_step:
            steps = sorted(loss_by_step)
            curves[method] = (steps, [float(np.mean(loss_by_step[t])) for t in steps])
        miou = np.array([m["miou"] for m in ms]) * 100
        mini = np.array([m["min_iou"] for m in ms]) * 100
        rrec = np.array([np.nanmean(_per_class(m, "recall")[rare]) for m in ms]) * 100
        ious = np.stack([_per_class(m, "iou") for m in ms]) * 100
        table[method] = {"n": len(ms), "miou": (miou.mean(), miou.std()), "min_iou": (mini.mean(), mini.std()),
                         "rare_recall": (rrec.mean(), rrec.std()), "iou": np.nanmean(ious, 0)}
        if gh_conf:
            table[method]["gh_conflict"] = (float(np.mean(gh_conf)), float(np.std(gh_conf)))
            table[method]["gh_angle"] = (float(np.mean(gh_angle)), float(np.std(gh_angle)))
        if kl:
            table[method]["labelled_kl"] = (float(np.mean(kl)), float(np.std(kl)))
            table[method]["labelled_min_share"] = (float(np.mean(min_share)), float(np.std(min_share)))
    names = [CLASS_NAMES[c] for c in rare]
    lines = [f"Rarest target classes (val ground truth): {', '.join(names)}.", "",
             "| method | seeds | mIoU | min-class IoU | rare recall |", "|---|---|---|---|---|"]
    for method, t in table.items():
        lines.append(f"| {method} | {t['n']} | {t['miou'][0]:.1f} ± {t['miou'][1]:.1f} | "
                     f"{t['min_iou'][0]:.1f} ± {t['min_iou'][1]:.1f} | "
                     f"{t['rare_recall'][0]:.1f} ± {t['rare_recall'][1]:.1f} |")
    gh_rows = {k: t for k, t in table.items() if "gh_conflict" in t}
    if gh_rows:
        lines += ["", "Gradient conflict between the task and alignment gradients (GH runs; mean over logged "
                      "intervals, then over seeds):", "", "| method | steps in conflict (%) | mean angle (deg) |",
                  "|---|---|---|"]
        for method, t in gh_rows.items():
            lines.append(f"| {method} | {t['gh_conflict'][0]:.1f} ± {t['gh_conflict'][1]:.1f} | "
                         f"{t['gh_angle'][0]:.1f} ± {t['gh_angle'][1]:.1f} |")
    al_rows = {k: t for k, t in table.items() if "labelled_kl" in t}
    if al_rows:
        lines += ["", "Labelled target set after the last acquisition round (active runs; mean over seeds): KL "
                      "divergence of its class histogram to uniform (lower = more balanced) and the share of its "
                      "rarest class:", "", "| method | KL to uniform | rarest-class share (%) |", "|---|---|---|"]
        for method, t in al_rows.items():
            lines.append(f"| {method} | {t['labelled_kl'][0]:.3f} ± {t['labelled_kl'][1]:.3f} | "
                         f"{t['labelled_min_share'][0]:.2f} ± {t['labelled_min_share'][1]:.2f} |")
    lines += ["", "Per-class IoU (mean over seeds):", "",
              "| method | " + " | ".join(CLASS_NAMES) + " |", "|---" * (len(CLASS_NAMES) + 1) + "|"]
    for method, t in table.items():
        lines.append(f"| {method} | " + " | ".join("–" if np.isnan(v) else f"{v:.1f}" for v in t["iou"]) + " |")
    md = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(md)
    with open(out / "runs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["method", "seed", "miou", "min_iou", "acc"])
        w.writeheader()
        w.writerows(runs)
    (out / "summary.json").write_text(json.dumps(
        {"rare_classes": names, "methods": {k: {**{m: list(v) for m, v in t.items() if m in (
            "miou", "min_iou", "rare_recall", "gh_conflict", "gh_angle", "labelled_kl", "labelled_min_share")},
                                                "n": t["n"], "iou": [None if np.isnan(x) else x for x in t["iou"]]}
                                            for k, t in table.items()}, "runs": runs}, indent=1))
    try:
        from balda.engine import plots

        plots.plot_class_iou({k: t["iou"] / 100 for k, t in table.items()}, CLASS_NAMES, out / "class_iou.png",
                             title="target per-class IoU")
        plots.plot_bars({k: t["miou"][0] for k, t in table.items()}, out / "miou.png", "target mIoU", "mIoU (%)",
                        errors={k: t["miou"][1] for k, t in table.items()})
        if curves:
            plots.plot_curves(curves, out / "training_source_ce.png", "source CE during training (mean over seeds)",
                              "iteration", "loss")
        plots.plot_bars({k: t["rare_recall"][0] for k, t in table.items()}, out / "rare_recall.png",
                        f"mean recall of the {len(rare)} rarest classes", "recall (%)",
                        errors={k: t["rare_recall"][1] for k, t in table.items()})
    except Exception as e:  # pragma: no cover - plots never lose results
        log.warning("could not draw summary plots: %s", e)
    return {"markdown": md, "table": table, "rare": rare}


def run_grid(methods: Iterable[str], seeds: Iterable[int], data: Path, out: Path, quick: bool = False,
             subprocess_mode: bool = False, progress: bool = True, extra: Iterable[str] = (), jobs: int = 1) -> dict:
    """Run every (method, seed) cell not yet finished, ``jobs`` subprocesses at a time (each with
    ``cpu_count // jobs`` threads), then summarise. With ``jobs > 1`` cells always run in subprocesses."""
    methods, seeds = list(methods), list(seeds)
    out.mkdir(parents=True, exist_ok=True)
    ensure_benchmark(data, progress)
    cells = [Cell(m, s) for s in seeds for m in methods]
    t0 = time.time()
    if jobs > 1:
        from concurrent.futures import ThreadPoolExecutor

        threads = max(1, (os.cpu_count() or 1) // jobs)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        todo = [c for c in cells if not is_done(c, out)]
        print(f"{len(cells) - len(todo)} of {len(cells)} cells already done; running {len(todo)} "
              f"with {jobs} jobs x {threads} threads", flush=True)
        # cells that start from another cell's run (CPSL's warm-up) go in a second phase, so that
        # two workers never train the same run folder at once
        phases = [[c for c in todo if c.method not in WARMUP], [c for c in todo if c.method in WARMUP]]
        done = 0
        bar = _grid_progress(len(todo)) if progress else None
        for k, phase in enumerate(phases):
            if k == 1:  # warm-ups and preparation first, one at a time (idempotent)
                for c in phase:
                    prepare_warmup(c, data, out, quick, extra, True, False)
            with ThreadPoolExecutor(jobs) as pool:
                futures = {pool.submit(run_cell, c, data, out, quick, extra, True, False): c for c in phase}
                for fut in futures:
                    fut.result()
                    done += 1
                    msg = f"[{done}/{len(todo)}] {futures[fut].method} seed {futures[fut].seed}: done " \
                          f"({time.time() - t0:.0f} s)"
                    if bar is not None:
                        bar[0].update(bar[1], advance=1, description=msg)
                    else:
                        print(msg, flush=True)
        if bar is not None:
            bar[0].stop()
    else:
        for i, cell in enumerate(cells):
            state = "done" if is_done(cell, out) else "running"
            print(f"[{i + 1}/{len(cells)}] {cell.method} seed {cell.seed}: {state}", flush=True)
            run_cell(cell, data, out, quick, extra, subprocess_mode, progress)
    summary = summarize(out, methods, seeds)
    summary["seconds"] = time.time() - t0
    return summary


README_BEGIN = "<!-- results:begin (generated by `balda bench --readme`; do not edit by hand) -->"
README_END = "<!-- results:end -->"


def git_commit(path: Path = Path(".")) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=path, capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def write_readme_section(readme: Path, out: Path, command: str, commit: Optional[str] = None) -> None:
    """Replace the README block between the results markers with ``out/summary.md``, stating the
    command, commit, machine and date it comes from."""
    import platform

    import torch

    summary = (out / "summary.md").read_text()
    n_runs = len(json.loads((out / "summary.json").read_text())["runs"])
    head = (f"Produced by `{command}` ({n_runs} runs) at commit `{commit or git_commit()}` on "
            f"{platform.machine()} with {os.cpu_count()} CPU cores, torch {torch.__version__}, "
            f"{time.strftime('%Y-%m-%d')}. Per-run metrics, configs and plots: `{out}/`.")
    block = f"{README_BEGIN}\n{head}\n\n{summary.strip()}\n{README_END}"
    text = readme.read_text()
    if README_BEGIN in text and README_END in text:
        pre, rest = text.split(README_BEGIN, 1)
        post = rest.split(README_END, 1)[1]
        text = pre + block + post
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    readme.write_text(text)


def _grid_progress(total: int):
    """An overall rich progress bar over a grid's cells (elapsed time and ETA)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                 TextColumn("eta"), TimeRemainingColumn())
    p.start()
    return p, p.add_task("grid", total=total)


def run_demo(out: Path = Path("runs/demo"), data: Path = Path("data/streets"), quick: bool = False,
             methods: Optional[Iterable[str]] = None, seeds: int = 1, progress: bool = True,
             jobs: Optional[int] = None) -> dict:
    """The main job: benchmark (generated if missing), the demo methods, a table and plots.

    Cells run as ``jobs`` parallel subprocesses (default 2 when there are at least 2 cores), each
    resumable; the demo's seed-0 cells are the benchmark grid's seed-0 cells."""
    methods = list(methods) if methods else list(DEMO_METHODS)
    if jobs is None:
        jobs = 2 if (os.cpu_count() or 1) >= 2 else 1
    summary = run_grid(methods, range(seeds), Path(data), Path(out), quick=quick, progress=progress, jobs=jobs)
    if summary:
        print()
        print(summary["markdown"])
        print(f"table, per-run metrics and plots in {out} ({summary['seconds']:.0f} s)")
    return summary
