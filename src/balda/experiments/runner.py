"""Running the bench grid: cells as resumable subprocesses (``jobs`` at a time), warm-ups first,
the benchmark generated when missing; ``balda demo`` is a small grid."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Optional

from balda.core.errors import ConfigError

from .catalog import BENCHMARKS, DEMO_ITERS, DEMO_METHODS, Cell, benchmark_of, cell_config, cell_overrides, entry
from .summary import summarize

log = logging.getLogger("balda.experiments")


def prepare_warmup(
    cell: Cell, data: Path, out: Path, quick: bool, extra: Iterable[str], subprocess_mode: bool, progress: bool
) -> list[str]:
    """Finish the warm-up cell and return the overrides that start ``cell`` from it: what the entry's
    ``prepare`` returns (CPSL: ``balda cpsl prepare`` on the warm-up run), else ``model.init`` = the
    warm-up's final weights."""
    e = entry(cell.method)
    warm = Cell(e.warmup, cell.seed)
    run_cell(warm, data, out, quick, extra, subprocess_mode, progress)
    if e.prepare is None:
        return [f"model.init={out / warm.name / 'final.pt'}"]
    return list(e.prepare(out / warm.name, out, cell.seed, data, progress))


def _has_warmup(cell: Cell) -> bool:
    return entry(cell.method).warmup is not None


def is_done(cell: Cell, out: Path) -> bool:
    return (out / cell.name / "final_metrics.json").is_file()


def run_cell(
    cell: Cell,
    data: Path,
    out: Path,
    quick: bool = False,
    extra: Iterable[str] = (),
    subprocess_mode: bool = False,
    progress: bool = True,
) -> dict:
    """Train and evaluate one cell (resuming its run if interrupted); return its final metrics."""
    if not is_done(cell, out) and _has_warmup(cell):
        extra = list(extra) + prepare_warmup(cell, data, out, quick, extra, subprocess_mode, progress)
    if not is_done(cell, out):
        if subprocess_mode:
            cmd = [
                sys.executable,
                "-m",
                "balda.cli",
                "train",
                entry(cell.method).config,
                *cell_overrides(cell, data, out, quick, extra),
                "--resume",
            ]
            if not progress:
                cmd.append("--no-progress")
            env = dict(os.environ)
            (out / cell.name).mkdir(parents=True, exist_ok=True)
            with open(out / cell.name / "stdout.log", "a") as f:
                r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
            if r.returncode != 0:
                raise RuntimeError(
                    f"cell {cell.name} failed (exit {r.returncode}); see {out / cell.name / 'stdout.log'}"
                )
        else:
            from balda.engine.trainer import train

            train(cell_config(cell, data, out, quick, extra), resume=True, progress=progress)
    return json.loads((out / cell.name / "final_metrics.json").read_text())


def ensure_benchmark(data: Path, progress: bool = True, benchmark: str = "streets") -> None:
    """Generate ``benchmark`` (:data:`~balda.experiments.catalog.BENCHMARKS`) in ``data`` unless a
    complete one is there already (one generated with other parameters is used as it is)."""
    BENCHMARKS[benchmark].ensure(Path(data), progress)


def run_grid(
    methods: Iterable[str],
    seeds: Iterable[int],
    data: Optional[Path],
    out: Optional[Path],
    quick: bool = False,
    subprocess_mode: bool = False,
    progress: bool = True,
    extra: Iterable[str] = (),
    jobs: int = 1,
    seeds_of: Optional[dict[str, Iterable[int]]] = None,
) -> dict:
    """Run every (method, seed) cell not yet finished, ``jobs`` subprocesses at a time (each with
    ``cpu_count // jobs`` threads), then summarise. With ``jobs > 1`` cells always run in subprocesses.
    ``data`` / ``out`` None: the benchmark's folder (``data/<benchmark>``) and ``results/<benchmark>``.
    ``seeds_of`` gives some methods their own seeds instead of ``seeds`` (more seeds where a
    difference is within one std); the summary then reports each method over the seeds it has."""
    methods, seeds = list(methods), list(seeds)
    own = {m: list(v) for m, v in (seeds_of or {}).items()}
    unknown = sorted(set(own) - set(methods))
    if unknown:
        raise ConfigError(f"seeds given for method(s) {unknown} that are not in the grid's methods")
    all_seeds = sorted(set(seeds).union(*own.values()))
    bench = benchmark_of(methods)
    data = Path(bench.default_data) if data is None else Path(data)
    out = Path("results") / bench.name if out is None else Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ensure_benchmark(data, progress, bench.name)
    cells = [Cell(m, s) for s in all_seeds for m in methods if s in own.get(m, seeds)]
    t0 = time.time()
    if jobs > 1:
        from concurrent.futures import ThreadPoolExecutor

        threads = max(1, (os.cpu_count() or 1) // jobs)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        todo = [c for c in cells if not is_done(c, out)]
        print(
            f"{len(cells) - len(todo)} of {len(cells)} cells already done; running {len(todo)} "
            f"with {jobs} jobs x {threads} threads",
            flush=True,
        )
        # cells that start from another cell's run (CPSL's warm-up) go in a second phase, so that
        # two workers never train the same run folder at once
        phases = [[c for c in todo if not _has_warmup(c)], [c for c in todo if _has_warmup(c)]]
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
                    msg = (
                        f"[{done}/{len(todo)}] {futures[fut].method} seed {futures[fut].seed}: done "
                        f"({time.time() - t0:.0f} s)"
                    )
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
    summary = summarize(out, methods, {m: own.get(m, seeds) for m in methods})
    if summary:
        summary["seconds"], summary["out"] = time.time() - t0, str(out)
    return summary


def _grid_progress(total: int):
    """An overall rich progress bar over a grid's cells (elapsed time and ETA)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    p = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    p.start()
    return p, p.add_task("grid", total=total)


def run_demo(
    out: Path = Path("runs/demo"),
    data: Path = Path("data/streets"),
    quick: bool = False,
    methods: Optional[Iterable[str]] = None,
    seeds: int = 1,
    progress: bool = True,
    jobs: Optional[int] = None,
    iters: int = DEMO_ITERS,
) -> dict:
    """The main job: benchmark (generated if missing), the demo methods, a table and plots.

    Cells run as ``jobs`` parallel subprocesses (default 2 when there are at least 2 cores), each
    resumable, with the benchmark recipe shortened to ``iters`` iterations (:data:`DEMO_ITERS`, so
    the whole demo fits in 10 minutes on 2 cores; the README's tables use the full recipe)."""
    methods = list(methods) if methods else list(DEMO_METHODS)
    if jobs is None:
        jobs = 2 if (os.cpu_count() or 1) >= 2 else 1
    extra = [] if quick else [f"train.iters={iters}", f"train.ckpt_every={max(iters // 4, 1)}"]
    summary = run_grid(
        methods, range(seeds), Path(data), Path(out), quick=quick, progress=progress, jobs=jobs, extra=extra
    )
    if summary:
        print()
        print(summary["markdown"])
        print(f"table, per-run metrics and plots in {out} ({summary['seconds']:.0f} s)")
    return summary
