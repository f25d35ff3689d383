"""Registries: how a method, a CLI verb, a plot or a bench entry makes itself known from its own module.

As timm registers models (``@register_model``), a strategy registers itself where it is defined::

    @register_strategy("cpsl", config=CPSLConfig, description="class-balanced pixel-level self-labeling")
    class CPSLStrategy(Strategy): ...

and the config loader, the trainer, the CLI and ``balda bench`` find it by name; none of them names
a method. A registry knows which module defines its built-in entries and imports it on the first
look-up (plus any module a third-party package declares under the ``balda.plugins`` entry-point
group), so registration never depends on import order.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, Optional, TypeVar

from balda.core.errors import ConfigError

log = logging.getLogger("balda.registry")

T = TypeVar("T")

#: Modules holding the built-in entries of every registry (imported once, on the first look-up).
BUILTIN_MODULES = (
    "balda.methods",
    "balda.active",
    "balda.engine.tasks",
    "balda.engine.classification",
    "balda.engine.panoptic_task",
)
#: Entry-point group of third-party plugins (each entry point names a module to import).
PLUGIN_GROUP = "balda.plugins"

_loaded = False


def load_plugins() -> None:
    """Import the built-in method modules and the modules of installed plugins (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in BUILTIN_MODULES:
        importlib.import_module(mod)
    try:
        from importlib.metadata import entry_points

        for ep in entry_points(group=PLUGIN_GROUP):
            try:
                ep.load()
            except Exception as e:  # noqa: BLE001 - a broken plugin must not break balda
                log.warning("could not load balda plugin %s: %s", ep.name, e)
    except Exception:  # pragma: no cover - importlib.metadata without entry points
        pass


class Registry(Generic[T]):
    """A name -> entry map; :meth:`get` raises :class:`ConfigError` listing the known names."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T, replace: bool = False) -> T:
        if name in self._entries and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> None:
        self._entries.pop(name, None)

    def get(self, name: str, key: str = "") -> T:
        load_plugins()
        if name not in self._entries:
            where = f"{key}: " if key else ""
            raise ConfigError(f"{where}unknown {self.kind} {name!r}; registered: {', '.join(sorted(self._entries))}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        load_plugins()
        return name in self._entries

    def names(self) -> list[str]:
        load_plugins()
        return list(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        load_plugins()
        return iter(list(self._entries.items()))


# ----------------------------------------------------------------------------------- strategies
@dataclass(frozen=True)
class StrategySpec:
    """A registered strategy: its class, its config dataclass (``method.<name>``, or None) and a
    one-line description (``balda configs``, ``--help``)."""

    name: str
    cls: type
    config: Optional[type] = None
    description: str = ""


STRATEGIES: Registry[StrategySpec] = Registry("strategy")


def register_strategy(name: str, config: Optional[type] = None, description: str = "") -> Callable[[type], type]:
    """Class decorator: register a :class:`~balda.methods.base.Strategy` subclass under ``name``,
    with its config dataclass (read from ``method.<name>`` of a config file, validated strictly)."""

    def deco(cls: type) -> type:
        STRATEGIES.add(
            name, StrategySpec(name, cls, config, description or (cls.__doc__ or "").split("\n")[0]), replace=True
        )
        cls.registered_name = name
        return cls

    return deco


# ------------------------------------------------------------------------ wrappers, hooks, plots, CLI
@dataclass(frozen=True)
class WrapperSpec:
    """A strategy wrapper applied when ``enabled(cfg)``: ``wrap(strategy, cfg, model, weighting)``
    returns the wrapped strategy (active learning wraps any base strategy)."""

    name: str
    enabled: Callable[[Any], bool]
    wrap: Callable[..., Any]


STRATEGY_WRAPPERS: Registry[WrapperSpec] = Registry("strategy wrapper")

#: Run plots: ``fn(run_dir, records) -> list of written paths``, called after every run by the report.
RUN_PLOTS: Registry[Callable[..., list]] = Registry("run plot")


@dataclass(frozen=True)
class CommandSpec:
    """A CLI verb registered by the module that implements it (``name`` may be two words, as
    ``cpsl prepare``): ``add()`` returns its ``argparse.ArgumentParser``, whose ``func`` default runs it."""

    name: str
    add: Callable[[], Any]


CLI_COMMANDS: Registry[CommandSpec] = Registry("command")


def register_command(name: str) -> Callable[[Callable], Callable]:
    """Decorator of a function returning the verb's parser (options mix with ``key=value``
    overrides in any order; set ``help_line`` on it for ``balda --help``)."""

    def deco(fn: Callable) -> Callable:
        CLI_COMMANDS.add(name, CommandSpec(name, fn), replace=True)
        return fn

    return deco


@dataclass(frozen=True)
class BenchEntry:
    """A ``balda bench`` method: a shipped config plus overrides, the method whose finished run of
    the same seed it starts from (``warmup``: ``model.init`` from it, or ``prepare(...)``), and the
    controls it is compared with (paired by seed)."""

    name: str
    config: str
    overrides: tuple[str, ...] = ()
    controls: tuple[str, ...] = ()
    warmup: Optional[str] = None
    #: ``prepare(warm_run_dir, out_dir, seed, data_root, progress) -> list of overrides`` for the cell
    #: (CPSL: ``balda cpsl prepare`` on the warm-up run); None = start from the warm-up's weights.
    prepare: Optional[Callable[..., list]] = field(default=None, compare=False)
    #: The benchmark the cell trains on (:data:`balda.experiments.catalog.BENCHMARKS`: ``streets``,
    #: ``digits``); one grid holds methods of one benchmark.
    benchmark: str = "streets"


BENCH: Registry[BenchEntry] = Registry("bench method")


def register_bench(*entries: BenchEntry) -> None:
    """Add catalogue entries to ``balda bench`` (in table order)."""
    for e in entries:
        BENCH.add(e.name, e, replace=True)


# ------------------------------------------------------------------------------------------ tasks
@dataclass(frozen=True)
class TaskSpec:
    """A prediction problem: the builders the trainer calls (each receives the whole config)."""

    name: str
    #: ``build_model(cfg) -> nn.Module`` (outputs with ``.logits`` and ``.features``)
    build_model: Callable[[Any], Any]
    #: ``build_dataset(dataset_cfg, cfg) -> dataset`` (the validation split; class statistics)
    build_dataset: Callable[[Any], Any]
    #: ``build_loader(cfg, start_step, **strategy.loader_options()) -> iterator of batches``
    build_loader: Callable[..., Any]
    #: ``evaluate(model, dataset, cfg, device, progress, export_dir) -> metrics``
    evaluate: Callable[..., Any]
    #: ``class_counts(dataset, cfg, progress) -> (K,) counts`` for prior-based class weights, or None
    class_counts: Callable[..., Any] | None = None


TASKS: Registry[TaskSpec] = Registry("task")


def register_task(spec: TaskSpec) -> TaskSpec:
    return TASKS.add(spec.name, spec, replace=True)
