"""Experiment grids on the embedded benchmark: ``balda demo`` and ``balda bench``.

* :mod:`.catalog` - the named methods (a shipped config plus overrides), their warm-ups and controls;
* :mod:`.runner` - cells as resumable subprocesses, ``jobs`` at a time; an interrupted grid resumes
  where it stopped (a cell whose ``final_metrics.json`` exists is never re-run);
* :mod:`.summary` - mean +- std over seeds, paired-by-seed differences to the controls with 95%
  intervals, per-class IoU, conflict and labelled-set tables, plots (Markdown, CSV, JSON);
* :mod:`.readme` - the results block of the README, regenerated from a summary.
"""

from __future__ import annotations

from .catalog import (
    DEMO_METHODS,
    QUICK_BENCH_METHODS,
    Cell,
    benchmark_of,
    cell_config,
    cell_overrides,
    entries,
    entry,
)
from .readme import README_BEGIN, README_END, git_commit, readme_markers, write_readme_section
from .runner import ensure_benchmark, is_done, prepare_warmup, run_cell, run_demo, run_grid
from .summary import paired_differences, summarize

__all__ = [
    "CATALOG",
    "CONTROLS",
    "DEMO_METHODS",
    "QUICK_BENCH_METHODS",
    "WARMUP",
    "Cell",
    "entries",
    "entry",
    "README_BEGIN",
    "benchmark_of",
    "README_END",
    "cell_config",
    "cell_overrides",
    "ensure_benchmark",
    "git_commit",
    "is_done",
    "paired_differences",
    "prepare_warmup",
    "run_cell",
    "run_demo",
    "run_grid",
    "summarize",
    "readme_markers",
    "write_readme_section",
]


def __getattr__(name: str):
    """``CATALOG``, ``CONTROLS``, ``WARMUP`` (with the registered entries): see :mod:`.catalog`."""
    if name in ("CATALOG", "CONTROLS", "WARMUP"):
        from . import catalog

        return getattr(catalog, name)
    raise AttributeError(name)
