"""The iteration-driven trainer shared by every strategy.

One loop serves all methods: per step it draws the (source, target) batch of that step (batches
are a deterministic function of ``(seed, step)``, so a resumed run sees the same data), asks the
strategy for its named losses, lets the combiner (plain sum or gradient harmonization) turn them
into gradients, clips, steps the optimiser and the schedule, then runs the strategy's post-step
hook (EMA teacher, discriminator). Active-learning rounds run at their scheduled iterations.

Checkpoints (``last.pt``, ``iter_N.pt``, ``best.pt``) are written atomically and hold everything
needed for an exact resume: model, optimiser, schedule, strategy (teacher, discriminator and its
optimiser, class-weight EMA), grad scaler, RNG states and the iteration.

Under ``torchrun`` (several processes) each rank trains on its share of every global batch, the
segmentor is wrapped in DDP, and a step runs inside :func:`balda.core.dist.sharded_step`
(global loss normalisation, all-reduced statistics, agreed non-finite check). With a harmonizing
combiner the step runs under DDP's ``no_sync()`` and the combiner averages the gradients itself;
strategy parameters outside DDP (CPSL prototypes) are averaged after the backward; rank 0's
buffers are broadcast after the optimiser step. Only rank 0 evaluates and writes files. See the
module docstring of :mod:`balda.core.dist`.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import torch

from balda.config import Config, save_config, to_dict
from balda.core import dist
from balda.core.atomic import atomic_write_text
from balda.core.checkpoint import (
    CheckpointError,
    atomic_save,
    load_checkpoint,
    load_model_weights,
    rng_state,
    seed_everything,
    set_rng_state,
)
from balda.core.env import record as record_environment
from balda.core.errors import ConfigError, NonFiniteLossError
from balda.core.hooks import HookBase
from balda.engine.hooks import FaultInjection, FinalEvalAndSave, PeriodicCheckpoint, PeriodicEval, RunPlots
from balda.engine.logger import RunLogger, read_metrics
from balda.engine.optim import build_optimizer

log = logging.getLogger("balda.train")

__all__ = ["Trainer", "train", "resolve_device", "NonFiniteLossError"]


def resolve_device(name: str) -> torch.device:
    """``train.device`` as a device: ``auto`` = this rank's GPU if there is one, else the CPU.
    Raises :class:`ConfigError` for a device this machine does not have."""
    if name == "auto":
        if dist.is_distributed() and torch.cuda.is_available():
            return torch.device("cuda", dist.local_rank())
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ConfigError(
                f"'train.device': {name!r} but no CUDA device is available on this machine "
                "(use train.device=cpu or auto)"
            )
        if dev.index is not None and dev.index >= n:
            raise ConfigError(f"'train.device': {name!r} but this machine has {n} CUDA device(s)")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"'train.device': {name!r} but MPS is not available on this machine")
    return dev


def _to_device(batch, device):
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    return batch


def _grads_finite(optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """A device flag: every gradient the optimiser would apply is finite (one fused norm per
    device and dtype, no host sync; a NaN or inf entry makes its tensor's norm non-finite)."""
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if not grads:
        return torch.ones((), dtype=torch.bool)
    norms = torch._foreach_norm(grads)
    dev = norms[0].device
    return torch.stack([n.to(dev, torch.float32) for n in norms]).isfinite().all()


class Trainer:
    """Train ``cfg`` into ``cfg.run_dir``; ``resume=True`` continues from ``last.pt`` if present,
    a path resumes from that checkpoint. A resumed run must have the checkpoint's config except for
    the keys (or sections) in ``allow_changes`` (:mod:`balda.engine.resume`)."""

    def __init__(
        self,
        cfg: Config,
        resume: bool | str = False,
        progress: Optional[bool] = None,
        allow_changes: Sequence[str] = (),
    ):
        from balda.balancing.class_weights import build_weighting
        from balda.balancing.combine import build_combiner
        from balda.core.registry import TASKS
        from balda.methods import build_strategy

        self.cfg = cfg
        #: The prediction problem (:mod:`balda.engine.tasks`): model, data, loader and evaluation.
        self.task = TASKS.get(cfg.task, "task")
        self.run_dir = cfg.run_dir
        self.is_main = dist.is_main()
        self.device = resolve_device(cfg.train.device)
        if dist.is_distributed():
            self._check_distributed()
        self.progress = cfg.train.progress if progress is None else progress
        seed_everything(cfg.train.seed)

        resume_from = self._resume_path(resume)
        self.model = self.task.build_model(cfg)
        if cfg.model.init and resume_from is None:  # a resumed run loads its own weights
            from balda.models.weights import load_segmentor

            load_segmentor(self.model, cfg.model.init)
        self.model = self.model.to(self.device)
        if cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if cfg.train.compile:
            self.model.compile()
        # scanned now so that a missing or empty folder fails before any training (the loader reuses it)
        self.source_ds = self.task.build_dataset(cfg.data.source, cfg)
        self.val_ds = self.task.build_dataset(cfg.data.val, cfg)
        counts = None
        if cfg.balancing.class_weights in ("inverse_freq", "class_balanced"):
            if self.task.class_counts is None:
                raise ConfigError(
                    f"'balancing.class_weights': {cfg.balancing.class_weights} needs class statistics, "
                    f"which the {cfg.task} task does not provide"
                )
            counts = dist.main_first(  # rank 0 fills the cache, the others read it
                lambda: self.task.class_counts(self.source_ds, cfg, progress=self.progress and self.is_main)
            )
        weighting = build_weighting(cfg.balancing, cfg.model.num_classes, counts)
        self.strategy = build_strategy(cfg, self.model, weighting).to(self.device)
        self.optimizer, self.scheduler = build_optimizer(
            self.model, cfg.optim, cfg.train.iters, extra=self.strategy.optimized_with_model()
        )
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        head = cfg.balancing.gh.params == "decoder" and hasattr(self.model, "decode_head")
        self.shared = [
            p for p in (self.model.decode_head.parameters() if head else self.model.parameters()) if p.requires_grad
        ]
        self.combiner = build_combiner(cfg.balancing)
        amp = cfg.train.amp if self.device.type == "cuda" else "none"
        self.amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(amp)
        self.scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
        self.ddp_model = dist.wrap_ddp(self.model, self.device) if dist.is_distributed() else None
        # parameters whose gradients DDP does not average (e.g. CPSL prototypes): reduced by hand
        in_ddp = {id(p) for p in self.model.parameters()} if self.ddp_model is not None else set()
        self._outside_ddp = [p for p in self.params if id(p) not in in_ddp]

        self.step = 0
        self.best_miou = -1.0
        self.skipped = 0
        self.logger: Optional[RunLogger] = None
        self.final_metrics = None
        self._loader_stale = True
        #: Hooks around every step (:mod:`balda.engine.hooks`), the strategy's own in the middle.
        self.hooks: list[HookBase] = [
            PeriodicEval(),
            PeriodicCheckpoint(),
            *self.strategy.hooks(),
            FaultInjection(),
            FinalEvalAndSave(),
            RunPlots(),
        ]
        if resume:
            if self.is_main:  # orphans of a run killed while writing a checkpoint
                for tmp in self.run_dir.glob(".*.pt.*.tmp"):
                    tmp.unlink(missing_ok=True)
            if resume_from is not None:
                self.load(resume_from, allow_changes=allow_changes)
        if self.is_main:
            save_config(cfg, self.run_dir / "config.yaml")
            record_environment(self.run_dir, self.step, str(self.device))

    # ----------------------------------------------------------------------------------- setup
    def _resume_path(self, resume: bool | str | Path) -> Optional[Path]:
        """The checkpoint construction resumes from: ``last.pt`` of the run for ``resume=True`` (None
        when there is none yet: a fresh start), the given path otherwise (which must exist)."""
        if not resume:
            return None
        if isinstance(resume, bool):
            path = self.run_dir / "last.pt"
            return path if path.exists() else None
        path = Path(resume)
        if not path.exists():
            raise CheckpointError(f"--resume: checkpoint not found: {path}")
        return path

    def _check_distributed(self) -> None:
        from balda.config import ConfigError
        from balda.data.loaders import check_global_batch

        check_global_batch(self.cfg, dist.world_size())
        if self.cfg.model.sync_bn and self.device.type == "cpu":
            raise ConfigError(
                "'model.sync_bn': SyncBatchNorm needs CUDA devices (it does not run on CPU "
                "tensors); set model.sync_bn=false for CPU (gloo) runs"
            )

    def _loader(self):
        return self.task.build_loader(self.cfg, start_step=self.step, **self.strategy.loader_options())

    def reset_loader(self) -> None:
        """Rebuild the training loader before the next step (a hook changed what it draws)."""
        self._loader_stale = True

    # ------------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "strategy": self.strategy.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "step": self.step,
            "best_miou": self.best_miou,
            "rng": rng_state(),
            "config": to_dict(self.cfg),
            "model_config": to_dict(self.cfg.model),
        }

    def save(self, name: str = "last.pt") -> Optional[Path]:
        if not self.is_main:
            return None
        return atomic_save(self.state_dict(), self.run_dir / name)

    def load(self, path: str | Path, allow_changes: Sequence[str] = ()) -> None:
        """Resume from checkpoint ``path`` (see :mod:`balda.engine.resume` for config changes)."""
        from balda.engine.resume import check_resume, record_changes

        ckpt = load_checkpoint(path, map_location=self.device)
        changes = {}
        if isinstance(ckpt.get("config"), dict):
            changes = check_resume(ckpt["config"], to_dict(self.cfg), allow_changes, source=str(path))
        fresh = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        load_model_weights(self.model, ckpt["model"], path)
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.strategy.load_state_dict(ckpt["strategy"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"checkpoint {path} does not match this run's method/optimiser config: {e}") from None
        if any(k.startswith("optim.") for k in changes):  # an allowed new optimiser setting takes effect now
            for g, f in zip(self.optimizer.param_groups, fresh):
                g.update(f)
            self.scheduler.base_lrs = [f["initial_lr"] for f in fresh]
            for g, base, lam in zip(self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas):
                g["lr"] = base * lam(self.scheduler.last_epoch)
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.step = int(ckpt["step"])
        self.best_miou = float(ckpt.get("best_miou", -1.0))
        set_rng_state(ckpt["rng"])
        if changes and self.is_main:
            record_changes(self.run_dir, self.step, changes)
            log.warning(
                "resumed with changed config from step %d: %s",
                self.step,
                ", ".join(f"{k} {o!r} -> {n!r}" for k, (o, n) in changes.items()),
            )
        log.info("resumed from %s at iteration %d", path, self.step)

    # ------------------------------------------------------------------------------------ train
    def _check_finite(self, total: torch.Tensor, out, grads_finite: Optional[torch.Tensor] = None) -> bool:
        """One host sync per step on a scalar flag: a non-finite loss, or a finite loss whose
        gradient is not finite (``grads_finite``, a device flag), must never reach the weights."""
        flag = torch.isfinite(total.detach())
        if grads_finite is not None:
            flag = flag & grads_finite
        if bool(dist.all_true(flag)):  # all ranks agree (sharded step)
            return True
        bad = [n for n, v in out.losses.items() if not bool(torch.isfinite(v.detach()))]
        if bad or not bool(torch.isfinite(total.detach())):
            msg = f"non-finite loss at iteration {self.step}: {', '.join(bad) or 'total'}"
        else:
            msg = f"non-finite gradient at iteration {self.step} (the losses {', '.join(out.losses)} are finite)"
        if self.cfg.train.nan_policy == "raise":
            raise NonFiniteLossError(msg + " (set train.nan_policy=skip to skip such steps)")
        self.skipped += 1
        log.warning("%s; step skipped (%d in a row)", msg, self.skipped)
        if self.skipped > self.cfg.train.max_skipped:
            raise NonFiniteLossError(f"{self.skipped} consecutive non-finite steps; giving up")
        return False

    def train_step(self, batch: dict) -> dict:
        if self.ddp_model is None:
            return self._train_step(batch)
        # several processes: the step sees this rank's share of the global batch; a combiner that
        # reduces gradients itself (gradient harmonization) bypasses DDP's reducer
        no_sync = self.ddp_model.no_sync() if self.combiner.reduces_grads else contextlib.nullcontext()
        with dist.sharded_step(), no_sync:
            return self._train_step(batch)

    def _train_step(self, batch: dict) -> dict:
        """One iteration: each optimisation phase of the strategy (one for most methods; MCD has
        several), then the schedule step and the strategy's post-step hook."""
        model = self.ddp_model or self.model
        model.train()
        batch = _to_device(batch, self.device)
        if self.cfg.train.channels_last:
            for part in batch.values():
                if isinstance(part, dict) and isinstance(part.get("image"), torch.Tensor) and part["image"].dim() == 4:
                    part["image"] = part["image"].contiguous(memory_format=torch.channels_last)
        logs: dict = {}
        for phase in self.strategy.phases(self.step):
            if not self._phase(model, batch, phase, logs):
                return logs  # a skipped non-finite step: no schedule step, no post-step hook
        self.scheduler.step()
        if self.ddp_model is not None:  # one set of BatchNorm statistics for every rank and the teacher
            dist.broadcast_buffers(self.model)
        logs.update(self.strategy.after_step(self.model, self.step))
        logs["lr"] = torch.tensor(self.optimizer.param_groups[0]["lr"])
        return logs

    def _discard_step(self, buffers: list, saved: list) -> None:
        """Undo a step that must not reach the weights: the model's buffers back to their values
        before the forward pass, no gradients; a GradScaler that unscaled them backs off its scale
        (its update after an unscale, as when it skips a step with inf gradients itself)."""
        if buffers:
            torch._foreach_copy_(buffers, saved)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.update()

    def _phase(self, model, batch: dict, phase: str, logs: dict) -> bool:
        """Losses of one phase, their combined gradients, one optimiser step; False if skipped."""
        # BatchNorm running statistics change during the forward pass: keep a copy so that a
        # step with a non-finite loss or gradient leaves the whole model state (not only the weights) intact.
        buffers = list(self.model.buffers())
        saved = [b.clone() for b in buffers]
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            out = self.strategy.compute_phase(model, batch, self.step, phase)
        total = out.total()
        logs.update(out.logs)
        for n, v in out.losses.items():
            logs[f"loss/{n}"] = v.detach()
        self.optimizer.zero_grad(set_to_none=True)
        shared = self.shared if out.shared is None else list(out.shared)
        combiner_logs = self.combiner.backward(out, self.params, shared, scaler=self.scaler)
        for p in out.frozen:  # parameters this phase must not update: no gradient, so no step
            p.grad = None
        if self.ddp_model is not None and not self.combiner.reduces_grads:
            dist.all_reduce_grads(self._outside_ddp)  # strategy parameters DDP does not see
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grads_finite = norm = None
        if self.cfg.optim.grad_clip:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.grad_clip)
        if self.scaler is None:  # (a GradScaler skips a step with inf/NaN gradients itself)
            grads_finite = torch.isfinite(norm) if norm is not None else _grads_finite(self.optimizer)
        # checked after the backward pass, so that loss and gradient share the step's one host sync
        try:
            finite = self._check_finite(total, out, grads_finite)
        except NonFiniteLossError:
            self._discard_step(buffers, saved)
            raise
        if not finite:
            self._discard_step(buffers, saved)
            return False
        self.skipped = 0
        logs.update(combiner_logs)  # (a skipped step logs its losses only)
        if norm is not None:
            logs["grad_norm"] = norm
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return True

    def fit(self):
        """Train to ``cfg.train.iters``; returns the final :class:`~balda.engine.evaluation.Metrics`.

        Per step: the hooks' ``before_step`` (an acquisition round may reset the loader), the step,
        its logs, then the hooks' ``after_step`` (evaluation, checkpoint, fault injection); after the
        last step the hooks' ``after_train`` (final evaluation and checkpoints, plots)."""
        tcfg = self.cfg.train
        self.logger = logger = RunLogger(
            self.run_dir,
            tcfg.iters,
            self.step,
            tensorboard=tcfg.tensorboard,
            progress=self.progress and self.is_main,
            enabled=self.is_main,
            description=self.cfg.name,
        )
        try:
            for h in self.hooks:
                h.before_train(self)
            loader = None
            while self.step < tcfg.iters:
                for h in self.hooks:
                    h.before_step(self)
                if self._loader_stale or loader is None:
                    loader, self._loader_stale = iter(self._loader()), False
                logs = self.train_step(next(loader))
                logger.accumulate(logs, self.step + 1)
                self.step += 1
                if self.step % tcfg.log_every == 0 or self.step == tcfg.iters:
                    logger.flush(self.step)
                for h in self.hooks:
                    h.after_step(self)
                logger.progress(self.step)
            for h in self.hooks:
                h.after_train(self)
        finally:
            logger.close()
        return self.final_metrics

    # ------------------------------------------------------------------------------- evaluation
    def evaluate(self, export_dir: Optional[Path] = None):
        """The task's evaluation of the model to evaluate (:meth:`Strategy.eval_model`) on the val split."""
        return self.task.evaluate(
            self.strategy.eval_model(self.model),
            self.val_ds,
            self.cfg,
            self.device,
            progress=self.progress and self.is_main,
            export_dir=export_dir,
        )

    def eval_and_track(self, final: bool = False):
        """Evaluate (rank 0), log ``eval/*``, keep ``best.pt`` / ``best_metrics.json`` and, when
        ``final``, ``final_metrics.json``; returns the metrics (None on other ranks)."""
        logger = self.logger
        metrics = self.evaluate() if self.is_main else None
        if metrics is None:
            dist.barrier()
            return None
        logger.write(self.step, {f"eval/{k}": v for k, v in metrics.summary().items()}, kind="eval")
        if metrics.score > self.best_miou:  # the best score so far (mIoU for segmentation)
            self.best_miou = metrics.score
            self.save("best.pt")
            atomic_write_text(
                self.run_dir / "best_metrics.json", json.dumps({"step": self.step, **metrics.to_dict()}, indent=1)
            )
        if final:
            atomic_write_text(
                self.run_dir / "final_metrics.json", json.dumps({"step": self.step, **metrics.to_dict()}, indent=1)
            )
        dist.barrier()
        return metrics

    def write_report(self, metrics) -> None:
        """Plots of the finished run: per-class IoU, confusion matrix, loss and class-weight curves."""
        from balda.engine.report import write_run_plots

        try:
            write_run_plots(self.run_dir, metrics, read_metrics(self.run_dir))
        except Exception as e:  # plots must never lose a finished run
            log.warning("could not write plots for %s: %s", self.run_dir, e)


def train(cfg: Config, resume: bool | str = False, progress: Optional[bool] = None, allow_changes: Sequence[str] = ()):
    """Train a config end to end and return the final metrics."""
    return Trainer(cfg, resume=resume, progress=progress, allow_changes=allow_changes).fit()
