"""The trainer's own hooks (:class:`balda.core.hooks.HookBase`): periodic evaluation, periodic
checkpoints, the final evaluation / checkpoints / plots, and fault injection for the kill tests.

Order inside a step (what the real-kill resume tests rely on): the step's logs are flushed, then
:class:`PeriodicEval`, :class:`PeriodicCheckpoint`, the strategy's hooks, :class:`FaultInjection`.
"""

from __future__ import annotations

import logging
import os
import signal

from balda.core.hooks import HookBase

log = logging.getLogger("balda.train")

__all__ = ["PeriodicEval", "PeriodicCheckpoint", "FinalEvalAndSave", "RunPlots", "FaultInjection"]


class PeriodicEval(HookBase):
    """Evaluate every ``train.eval_every`` steps (not at the last step: the final evaluation does)."""

    def after_step(self, trainer) -> None:
        every = trainer.cfg.train.eval_every
        if every and trainer.step % every == 0 and trainer.step < trainer.cfg.train.iters:
            trainer.eval_and_track()


class PeriodicCheckpoint(HookBase):
    """Write ``last.pt`` and ``iter_<step>.pt`` every ``train.ckpt_every`` steps, keeping the newest
    ``train.keep_ckpts`` periodic checkpoints."""

    def after_step(self, trainer) -> None:
        every = trainer.cfg.train.ckpt_every
        if every and trainer.step % every == 0 and trainer.step < trainer.cfg.train.iters:
            trainer.save("last.pt")
            keep = trainer.cfg.train.keep_ckpts
            if not trainer.is_main or keep <= 0:
                return
            trainer.save(f"iter_{trainer.step}.pt")
            old = sorted(trainer.run_dir.glob("iter_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
            for p in old[:-keep]:
                p.unlink(missing_ok=True)


class FinalEvalAndSave(HookBase):
    """After the last step: the final evaluation (``final_metrics.json``), ``last.pt`` and ``final.pt``."""

    def after_train(self, trainer) -> None:
        trainer.final_metrics = trainer.eval_and_track(final=True)
        trainer.save("last.pt")
        trainer.save("final.pt")


class RunPlots(HookBase):
    """Plots of the finished run (rank 0): per-class IoU, confusion matrix, loss, evaluation and
    class-weight curves, and every registered run plot (:data:`balda.core.registry.RUN_PLOTS`)."""

    def after_train(self, trainer) -> None:
        if trainer.is_main:
            trainer.write_report(trainer.final_metrics)


#: Tests set BALDA_FAULT_KILL_AT_STEP=N to SIGKILL a training process right after step N (after that
#: step's logging, evaluation and checkpoint, if any: N = ckpt_every dies just after writing last.pt).
#: See also BALDA_FAULT_KILL_IN_SAVE in :mod:`balda.core.checkpoint`.
class FaultInjection(HookBase):
    def __init__(self, kill_at: int | None = None):
        self.kill_at = int(os.environ.get("BALDA_FAULT_KILL_AT_STEP", "-1")) if kill_at is None else kill_at

    def after_step(self, trainer) -> None:
        if trainer.step == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
