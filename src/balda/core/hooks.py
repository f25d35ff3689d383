"""Trainer hooks (as detectron2's ``HookBase``): code that runs around the steps of the one training
loop without the loop knowing it. Evaluation, checkpoints, plots, fault injection
(:mod:`balda.engine.hooks`) and a strategy's own needs (active learning's acquisition rounds,
:meth:`balda.methods.base.Strategy.hooks`) are hooks.

Each method receives the trainer; ``trainer.step`` is the number of iterations done. In
``before_step`` a hook may call ``trainer.reset_loader()`` (the data it draws changed, e.g. new
labels were acquired); in ``after_step`` the step's logs are flushed already.
"""

from __future__ import annotations

from typing import Any

__all__ = ["HookBase"]


class HookBase:
    """No-op base: override the moments you need."""

    def before_train(self, trainer: Any) -> None:
        """Once, before the first step (also on resume)."""

    def before_step(self, trainer: Any) -> None:
        """Before each step, with ``trainer.step`` = the index of the step about to run."""

    def after_step(self, trainer: Any) -> None:
        """After each step, with ``trainer.step`` = the number of steps done."""

    def after_train(self, trainer: Any) -> None:
        """Once, after the last step (the final evaluation and checkpoint are written)."""
