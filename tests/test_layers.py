"""The package imports downwards only: each top-level part of ``balda`` may import its own layer and
the layers below it, never one above (lazy imports inside functions count too), and there is no
import cycle. Layers, bottom to top, as the README's architecture section lists them."""

from __future__ import annotations

import ast
from pathlib import Path

import balda

LAYERS = [
    ("core",),  # errors, dist, atomic writes, checkpoint I/O, types, registries, hooks, progress
    ("config",),  # config dataclasses, YAML loading
    ("data",),  # label spaces, loaders, transforms, the procedural benchmarks
    ("plots",),  # figures
    ("models",),  # segmentors, classifiers, weights, inference
    ("balancing",),  # class weighting (GBW ...), loss combiners (GH ...)
    ("methods",),  # strategies producing named losses
    ("active",),  # active learning (acquisition, the strategy wrapper)
    ("engine",),  # trainer, hooks, evaluation, logging, prediction
    ("experiments",),  # bench catalogue, runner, summaries
    ("cli",),  # the command line
    ("__init__",),  # the public Python API
]
RANK = {part: i for i, parts in enumerate(LAYERS) for part in parts}
ROOT = Path(balda.__file__).parent


def _part(path: Path) -> str:
    rel = path.relative_to(ROOT).parts
    return rel[0][:-3] if rel[0].endswith(".py") else rel[0]


def _imports(path: Path) -> set[str]:
    """Top-level parts of balda imported by a file (absolute and relative, lazy ones included)."""
    rel = path.relative_to(ROOT).parts
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ["balda", *rel[:-1]][: len(rel) - node.level + 1]
                names = [".".join(base + ([node.module] if node.module else []))]
                if not node.module:
                    names = [".".join(base + [a.name]) for a in node.names]
            elif node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for n in names:
            p = n.split(".")
            if p[0] == "balda" and len(p) > 1 and p[1] in RANK:
                out.add(p[1])
    return out


def test_every_part_is_in_a_layer():
    parts = {_part(p) for p in ROOT.rglob("*.py")}
    assert parts <= set(RANK), f"parts without a layer: {sorted(parts - set(RANK))}"


def test_imports_go_downwards_only():
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        me = _part(path)
        for other in _imports(path):
            if other != me and RANK[other] > RANK[me]:
                bad.append(f"{path.relative_to(ROOT)} ({me}) imports balda.{other}")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_file_is_too_long():
    long = [f"{p.relative_to(ROOT)}: {n}" for p in ROOT.rglob("*.py") if (n := len(p.read_text().splitlines())) > 600]
    assert not long, long
