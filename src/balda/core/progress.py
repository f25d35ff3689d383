"""One progress bar for every long loop of balda (evaluation, acquisition, statistics, preparation,
generation): a rich bar with count and ETA, or a no-op when disabled (logs, tests, non-main ranks)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")

__all__ = ["progress_bar", "track"]


class _Bar:
    """What :func:`progress_bar` yields: ``advance(n)`` moves the bar (a no-op when disabled)."""

    def __init__(self, progress=None, task=None):
        self._p, self._task = progress, task

    def advance(self, n: int = 1) -> None:
        if self._p is not None:
            self._p.advance(self._task, n)


@contextmanager
def progress_bar(
    description: str, total: int, enabled: bool = True, completed: int = 0, transient: bool = True
) -> Iterator[_Bar]:
    """``with progress_bar("Evaluating", n) as bar: ... bar.advance()``: description, bar, done/total,
    time remaining. ``enabled=False`` (or rich missing) gives a bar that draws nothing."""
    if not enabled:
        yield _Bar()
        return
    try:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    except ImportError:  # pragma: no cover - rich is a dependency
        yield _Bar()
        return
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=transient,
    ) as p:
        yield _Bar(p, p.add_task(description, total=total, completed=completed))


def track(items: Iterable[T], total: int, description: str, enabled: bool = True) -> Iterator[T]:
    """Iterate ``items`` with a :func:`progress_bar` advanced once per item."""
    with progress_bar(description, total, enabled) as bar:
        for x in items:
            yield x
            bar.advance()
