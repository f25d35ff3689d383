"""The bench catalogue: named methods (a shipped config plus overrides), their warm-ups and controls.

A *method* of the catalogue is a shipped config plus overrides (``self_training+gbw`` is
``streets/self_training`` with ``balancing.class_weights=gbw``). A *cell* is a (method, seed)
pair; its run folder is ``<out>/<method>_s<seed>``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from balda.core.errors import ConfigError
from balda.core.registry import BENCH, BenchEntry

#: The built-in experiment design: method name -> (shipped config, overrides), in table order.
#: Method modules add their own entries to :data:`balda.core.registry.BENCH` (CPSL's, a plugin's).
_BUILTIN: dict[str, tuple[str, tuple[str, ...]]] = {
    "source_only": ("streets/source_only", ()),
    "oracle": ("streets/oracle", ()),
    "self_training": ("streets/self_training", ()),
    "advent": ("streets/advent", ()),
    "minent": ("streets/minent", ()),
    "source_only+gbw": ("streets/source_only", ("balancing.class_weights=gbw", "balancing.gbw.mode=scale_free")),
    # the released lambda on the source term alone: does self-training amplify GBW's ~1% weight
    # changes (pseudo-labels of classes near the confidence threshold), or do they act by themselves?
    "source_only+gbw_faithful": (
        "streets/source_only",
        ("balancing.class_weights=gbw", "balancing.gbw.mode=faithful"),
    ),
    "self_training+gbw": ("streets/self_training", ("balancing.class_weights=gbw", "balancing.gbw.mode=scale_free")),
    "self_training+gbw_faithful": (
        "streets/self_training",
        ("balancing.class_weights=gbw", "balancing.gbw.mode=faithful"),
    ),
    "self_training+inverse_freq": ("streets/self_training", ("balancing.class_weights=inverse_freq",)),
    "self_training+class_balanced": ("streets/self_training", ("balancing.class_weights=class_balanced",)),
    "advent+gbw": ("streets/advent", ("balancing.class_weights=gbw", "balancing.gbw.mode=scale_free")),
    "minent+gbw": ("streets/minent", ("balancing.class_weights=gbw", "balancing.gbw.mode=scale_free")),
    "advent+gh": ("streets/advent", ("balancing.combiner=gh",)),
    "advent+gh++": ("streets/advent", ("balancing.combiner=gh++",)),
    "minent+gh": ("streets/minent", ("balancing.combiner=gh",)),
    "self_training+gh": ("streets/self_training", ("balancing.combiner=gh",)),
    "self_training+gbw+gh": (
        "streets/self_training",
        ("balancing.class_weights=gbw", "balancing.gbw.mode=scale_free", "balancing.combiner=gh"),
    ),
    # #4's investigation of self-training: per-pixel confidence masks, and a two-stage run from the
    # source-only model (model.init) against its control, source-only continued for as long
    "self_training@pixel": ("streets/self_training", ("method.self_training.pseudo_weight=pixel",)),
    "self_training@warm": ("streets/self_training", ()),
    # DAFormer's rare class sampling on the source (min_pixels scaled from 1280x720 to 128x256)
    "self_training+rcs": ("streets/self_training", ("data.rcs.enabled=true", "data.rcs.min_pixels=100")),
    "source_only+rcs": ("streets/source_only", ("data.rcs.enabled=true", "data.rcs.min_pixels=100")),
    "source_only@warm": ("streets/source_only", ()),
    **{
        f"{sel}@{b}%": (f"streets/active_{sel}", (f"active.budget={b / 100}",))
        for b in (2, 5, 10, 20)
        for sel in ("ripu", "cbda")
    },
    # active learning on top of self-training (a combination no released code runs)
    **{
        f"self_training+{sel}@{b}%": (
            "streets/self_training",
            (
                "active.enabled=true",
                f"active.selection={sel}",
                "active.mode=region",
                f"active.budget={b / 100}",
                "active.rounds=[0.1, 0.2, 0.3, 0.4, 0.5]",
            ),
        )
        for b in (5,)
        for sel in ("ripu", "cbda")
    },
    # CBDA's two parts alone (the paper's ablation): class-balanced scores with RIPU's per-image
    # budget, and the dynamic global selection with RIPU's unweighted scores
    **{
        f"cbda_{part}@{b}%": ("streets/active_cbda", (f"active.budget={b / 100}", off))
        for b in (2, 5, 10)
        for part, off in (("balance", "active.cbda.dynamic=false"), ("dynamic", "active.cbda.class_balance=false"))
    },
}

#: The control each method is compared with, paired by seed (the difference of the two runs of the
#: same seed; see :func:`balda.experiments.summary.paired_differences`): the base a module is added
#: to, the warm-up a stage starts from, or the method a variant replaces.
_BUILTIN_CONTROLS: dict[str, tuple[str, ...]] = {
    "oracle": ("source_only",),
    "self_training": ("source_only",),
    "advent": ("source_only",),
    "minent": ("source_only",),
    "source_only+gbw": ("source_only",),
    "source_only+gbw_faithful": ("source_only",),
    "self_training+gbw": ("self_training",),
    "self_training+gbw_faithful": ("self_training",),
    "self_training+inverse_freq": ("self_training",),
    "self_training+class_balanced": ("self_training",),
    "advent+gbw": ("advent",),
    "minent+gbw": ("minent",),
    "advent+gh": ("advent",),
    "advent+gh++": ("advent", "advent+gh"),
    "minent+gh": ("minent",),
    "self_training+gh": ("self_training",),
    "self_training+gbw+gh": ("self_training", "self_training+gbw"),
    "self_training@pixel": ("self_training",),
    "self_training@warm": ("source_only@warm",),
    "self_training+rcs": ("self_training",),
    "source_only+rcs": ("source_only",),
    "source_only@warm": ("source_only",),
    **{f"ripu@{b}%": ("source_only",) for b in (2, 5, 10, 20)},
    **{f"cbda@{b}%": (f"ripu@{b}%",) for b in (2, 5, 10, 20)},
    **{f"cbda_{part}@{b}%": (f"ripu@{b}%",) for b in (2, 5, 10) for part in ("balance", "dynamic")},
    **{f"self_training+{sel}@5%": ("self_training", f"{sel}@5%") for sel in ("ripu", "cbda")},
}
_BUILTIN_CONTROLS["self_training+cbda@5%"] += ("self_training+ripu@5%",)

#: Methods that start from another method's finished run of the same seed: CPSL from its AdvEnt
#: warm-up (then ``balda cpsl prepare``), the ``@warm`` variants from its final weights (``model.init``).
_BUILTIN_WARMUP = {"self_training@warm": "source_only", "source_only@warm": "source_only"}


#: The image-classification grid (the GH paper's main setting, issue #17) on the digits benchmark:
#: the bounds, DANN, CDAN+E, MCD and MinEnt, each alone, with GH and with GH++ (the same combiner objects
#: as segmentation; for MCD, step B on the generator's gradients - see balda.methods.mcd).
_DIGITS_BASES = ("dann", "cdan_e", "mcd", "minent")
_DIGITS: dict[str, tuple[str, tuple[str, ...]]] = {
    "digits/source_only": ("digits/source_only", ()),
    "digits/oracle": ("digits/oracle", ()),
    **{
        f"digits/{b}{suffix}": (f"digits/{b}", over)
        for b in _DIGITS_BASES
        for suffix, over in (("", ()), ("+gh", ("balancing.combiner=gh",)), ("+gh++", ("balancing.combiner=gh++",)))
    },
}
_DIGITS_CONTROLS: dict[str, tuple[str, ...]] = {
    "digits/oracle": ("digits/source_only",),
    **{f"digits/{b}": ("digits/source_only",) for b in _DIGITS_BASES},
    **{f"digits/{b}+gh": (f"digits/{b}",) for b in _DIGITS_BASES},
    **{f"digits/{b}+gh++": (f"digits/{b}", f"digits/{b}+gh") for b in _DIGITS_BASES},
}

#: The panoptic grid (issue #18, GBW's second task) on the SYNTHIA-format street benchmark with
#: instance ids: the bounds, EDAPS-style self-training, and GBW on every semantic CE term.
_PANOPTIC: dict[str, tuple[str, tuple[str, ...]]] = {
    "panoptic/source_only": ("streets_panoptic/source_only", ()),
    "panoptic/oracle": ("streets_panoptic/oracle", ()),
    "panoptic/self_training": ("streets_panoptic/self_training", ()),
    "panoptic/source_only+gbw": (
        "streets_panoptic/source_only",
        ("balancing.class_weights=gbw", "balancing.gbw.mode=scale_free"),
    ),
    "panoptic/self_training+gbw": (
        "streets_panoptic/self_training",
        ("balancing.class_weights=gbw", "balancing.gbw.mode=scale_free"),
    ),
}
_PANOPTIC_CONTROLS: dict[str, tuple[str, ...]] = {
    "panoptic/oracle": ("panoptic/source_only",),
    "panoptic/self_training": ("panoptic/source_only",),
    "panoptic/source_only+gbw": ("panoptic/source_only",),
    "panoptic/self_training+gbw": ("panoptic/self_training",),
}


@dataclass(frozen=True)
class Benchmark:
    """A benchmark a grid trains on: its default folder, the ``data.*.root`` overrides of a cell
    (``roots(data)``) and ``ensure(data, progress)``, which generates it when missing."""

    name: str
    default_data: str
    roots: Callable[[Path], dict[str, Path]]
    ensure: Callable[[Path, bool], None]
    #: The headline metric of its summary (``final_metrics.json`` key).
    metric: str = "miou"


def _ensure_streets(data: Path, progress: bool = True) -> None:
    """Generate the default street benchmark in ``data`` unless a complete one is there already. A
    complete benchmark generated with other parameters (``balda generate streets --size ...``) is
    used as it is, never regenerated over."""
    import logging

    from balda.data.streets import generate_streets, load_streets_meta, streets_exists

    log = logging.getLogger("balda.experiments")
    meta = load_streets_meta(data)
    if meta is not None and meta.get("complete"):
        if not streets_exists(data):
            log.info("using the street benchmark in %s as it is (parameters %s)", data, meta.get("params"))
        return
    log.info("generating the street benchmark in %s", data)
    generate_streets(data, progress=progress)


def _ensure_streets_synthia(data: Path, progress: bool = True) -> None:
    """Generate the street benchmark with a SYNTHIA-format source (instance ids in both domains) in
    ``data`` unless a complete one is there already."""
    from balda.data.streets import generate_streets, load_streets_meta

    meta = load_streets_meta(data)
    if meta is not None and meta.get("complete"):
        return
    generate_streets(data, source_format="synthia", progress=progress)


def _ensure_digits(data: Path, progress: bool = True) -> None:
    """Generate the default digits benchmark in ``data`` unless a complete one is there (any parameters)."""
    from balda.data.digits import generate_digits, load_digits_meta

    meta = load_digits_meta(data)
    if meta is None or not meta.get("complete"):
        generate_digits(data)


#: The benchmarks of ``balda bench`` by name.
BENCHMARKS: dict[str, Benchmark] = {
    "streets": Benchmark(
        "streets",
        "data/streets",
        lambda d: {"source": d / "source", "target": d / "target", "val": d / "target"},
        _ensure_streets,
    ),
    "digits": Benchmark(
        "digits",
        "data/digits",
        lambda d: {"source": d / "source/train.txt", "target": d / "target/train.txt", "val": d / "target/test.txt"},
        _ensure_digits,
        metric="accuracy",
    ),
    "streets_panoptic": Benchmark(
        "streets_panoptic",
        "data/streets_synthia",
        lambda d: {"source": d / "source", "target": d / "target", "val": d / "target"},
        _ensure_streets_synthia,
        metric="mpq",
    ),
}


def benchmark_of(methods: Iterable[str]) -> Benchmark:
    """The one benchmark the ``methods`` train on (a grid mixing benchmarks is refused)."""
    names = {entry(m).benchmark for m in methods}
    if len(names) > 1:
        raise ConfigError(f"--methods mixes benchmarks {sorted(names)}; run one grid per benchmark")
    name = names.pop() if names else "streets"
    if name not in BENCHMARKS:
        raise ConfigError(f"bench entry benchmark {name!r} unknown; known: {sorted(BENCHMARKS)}")
    return BENCHMARKS[name]


def entries() -> dict[str, BenchEntry]:
    """Every bench method: the built-in design, then the entries registered by method modules (a
    registered name replaces a built-in one), in table order."""
    out = {
        name: BenchEntry(
            name, config, tuple(over), controls=_BUILTIN_CONTROLS.get(name, ()), warmup=_BUILTIN_WARMUP.get(name)
        )
        for name, (config, over) in _BUILTIN.items()
    }
    out.update(
        {
            name: BenchEntry(name, config, tuple(over), controls=_DIGITS_CONTROLS.get(name, ()), benchmark="digits")
            for name, (config, over) in _DIGITS.items()
        }
    )
    out.update(
        {
            name: BenchEntry(
                name, config, tuple(over), controls=_PANOPTIC_CONTROLS.get(name, ()), benchmark="streets_panoptic"
            )
            for name, (config, over) in _PANOPTIC.items()
        }
    )
    for name, e in BENCH.items():
        out[name] = e
    return out


def entry(name: str) -> BenchEntry:
    e = entries().get(name)
    if e is None:
        raise ConfigError(f"unknown bench method {name!r}; see `balda bench --list`")
    return e


def __getattr__(name: str):
    """``CATALOG`` (name -> (config, overrides)), ``CONTROLS`` and ``WARMUP``, computed from
    :func:`entries` when read (so registered entries are included)."""
    if name == "CATALOG":
        return {k: (e.config, e.overrides) for k, e in entries().items()}
    if name == "CONTROLS":
        return {k: e.controls for k, e in entries().items() if e.controls}
    if name == "WARMUP":
        return {k: e.warmup for k, e in entries().items() if e.warmup}
    raise AttributeError(name)


#: ``balda bench --quick``.
QUICK_BENCH_METHODS = ("source_only", "oracle", "self_training", "self_training+gbw", "advent", "advent+gh")
#: What ``balda demo`` trains by default: the bounds, the two families of base strategies, gradient
#: harmonization and class-balanced active learning (<= 10 minutes on 2 CPU cores with DEMO_ITERS).
DEMO_METHODS = ("source_only", "oracle", "self_training", "advent", "advent+gh", "cbda@5%")
#: The demo's schedule: the benchmark recipe shortened to fit the 10 minutes (the results tables of
#: the README come from ``balda bench`` with the full 1000-iteration recipe).
DEMO_ITERS = 400


@dataclass(frozen=True)
class Cell:
    method: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method.replace('+', '-').replace('@', '_').replace('/', '_')}_s{self.seed}"


def cell_overrides(cell: Cell, data: Path, out: Path, quick: bool = False, extra: Iterable[str] = ()) -> list[str]:
    e = entry(cell.method)
    roots = BENCHMARKS[e.benchmark].roots(Path(data))
    o = [
        f"name={cell.name}",
        f"out_dir={out}",
        f"train.seed={cell.seed}",
        *(f"data.{split}.root={roots[split]}" for split in ("source", "target", "val")),
        *e.overrides,
    ]
    if quick:
        o += ["train.iters=40", "train.ckpt_every=20", "train.log_every=10", "eval.max_images=16"]
    return o + list(extra)


def cell_config(cell: Cell, data: Path, out: Path, quick: bool = False, extra: Iterable[str] = ()):
    from balda.config import load_config, resolve_config

    return load_config(resolve_config(entry(cell.method).config), cell_overrides(cell, data, out, quick, extra))
