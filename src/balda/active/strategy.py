r"""Active domain adaptation: a base UDA strategy plus the losses of RIPU on acquired target labels.

RIPU (Xie et al., "Towards Fewer Annotations: Active Learning via Region Impurity and Prediction
Uncertainty for Domain Adaptive Semantic Segmentation", CVPR 2022); CBDA (Schachtsiek et al., arXiv
2311.14146) trains with the same losses and only changes the acquisition (:mod:`balda.active`).
:class:`ActiveStrategy` wraps any base :class:`~balda.methods.base.Strategy` and adds, on top of the
base losses:

* ``active.ce`` (task group, weight ``cfg.lambda_labelled``): cross-entropy on the labelled target
  pixels ``batch["target"]["label"]`` (the loader already set every non-acquired pixel to 255, see
  :meth:`balda.active.annotator.LabelStore.label_filter`), class weights from
  ``make_weighting("active")``; logits upsampled to the label size.
* ``active.neg`` (weight ``cfg.lambda_negative``): negative learning on the target predictions
  ``p = softmax(z)`` (at label resolution): over every pixel and class with ``p_ic < 0.05``
  (mask not differentiated), ``L = mean_{(i,c): p_ic < 0.05} -log(1 - p_ic + 1e-6)``.
* ``source.lc`` (weight ``cfg.lambda_consistency``): local consistency on the source. With the 3x3
  mean of the softmax map ``pbar_i = (1/9) sum_{j in N_3x3(i)} p_j`` (replicate padding, as released)
  the discrepancy is ``d_i = sum_c |p_ic - pbar_ic|`` (L1); ``L = mean of d_i`` over the pixels that
  are labelled and not on a label boundary, i.e. whose in-image 8-neighbours all share their
  (non-ignored) label. Deviation: the released code masks with a Laplacian of the label map that
  selects boundary pixels; balda follows the stated intent ("outside label boundaries").

Forward passes. The wrapper records the base strategy's forward passes with a temporary forward hook:
if the base already ran the segmentor with gradients on the very tensor ``batch["source"]["image"]``
(resp. ``batch["target"]["image"]``) those logits are reused; otherwise one extra forward is run.
``after_step`` and ``eval_model`` delegate to the base.

Registration: importing this module registers the wrapper ``active`` (applied to any base strategy
when ``active.enabled``); the wrapper owns the label store, the oracle annotator and the trainer hook
of the acquisition rounds (:class:`AcquisitionHook`), so the trainer knows nothing of active learning.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

from balda.config import ActiveConfig
from balda.core.hooks import HookBase
from balda.core.registry import STRATEGY_WRAPPERS, WrapperSpec
from balda.data.labels import IGNORE_INDEX
from balda.methods.base import StepOutput, Strategy, WeightingFactory
from balda.methods.losses import masked_mean, resize_logits
from balda.models.base import Segmentor

__all__ = [
    "ActiveStrategy",
    "AcquisitionHook",
    "negative_learning_loss",
    "local_consistency_loss",
    "label_interior_mask",
    "wrap_active",
]

log = logging.getLogger("balda.active")

NEG_THRESHOLD = 0.05


def negative_learning_loss(logits: torch.Tensor, threshold: float = NEG_THRESHOLD) -> torch.Tensor:
    """``mean_{(i,c): p_ic < t} -log(1 - p_ic + 1e-6)`` over all pixels and classes (0 if none)."""
    p = torch.softmax(logits.float(), dim=1)
    mask = (p < threshold).detach()
    loss = -(torch.log(1.0 - p + 1e-6) * mask).sum()
    return masked_mean(loss, mask.sum())


def label_interior_mask(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(B, H, W) bool: labelled pixels whose in-image 8-neighbours all carry the same label."""
    lab = labels.long()
    B, H, W = lab.shape
    # Pad with the pixel's own value (replicate) so out-of-image neighbours never break the test.
    pad = F.pad(lab[:, None].float(), (1, 1, 1, 1), mode="replicate")[:, 0].long()
    same = torch.ones_like(lab, dtype=torch.bool)
    for dy in (-1, 0, 1):  # 8 shifted views (a fixed 3x3 stencil, not a pixel loop)
        for dx in (-1, 0, 1):
            if dy or dx:
                same &= pad[:, 1 + dy : 1 + dy + H, 1 + dx : 1 + dx + W] == lab
    return same & (lab != ignore_index)


def local_consistency_loss(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """RIPU local consistency: mean over interior labelled pixels of ``sum_c |p_ic - mean_3x3(p)_ic|``."""
    logits = resize_logits(logits.float(), tuple(labels.shape[-2:]))
    p = torch.softmax(logits, dim=1)
    pbar = F.avg_pool2d(F.pad(p, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    d = (p - pbar).abs().sum(dim=1)
    mask = label_interior_mask(labels, ignore_index)
    return masked_mean((d * mask).sum(), mask.sum())


class ActiveStrategy(Strategy):
    """Base strategy + ``active.ce`` + ``active.neg`` + ``source.lc`` (module docstring)."""

    uses_target_labels = True

    def __init__(
        self,
        base: Strategy,
        model: Segmentor,
        weighting: Optional[WeightingFactory] = None,
        cfg: Optional[ActiveConfig] = None,
        reuse_forward: bool = True,
        store: Any = None,
        acquisition: Optional[HookBase] = None,
    ):
        super().__init__(model, weighting)
        self.base = base
        self.cfg = cfg if cfg is not None else ActiveConfig()
        self.active_ce = self.make_ce("active")
        self.reuse_forward = reuse_forward
        self.store = store  # the LabelStore of the acquired masks (None: labels used as loaded)
        self._acquisition = acquisition

    # --------------------------------------------------------------------------- trainer contract
    def optimized_with_model(self) -> list[torch.nn.Parameter]:
        return self.base.optimized_with_model()

    def hooks(self) -> list[Any]:
        return [*self.base.hooks(), *([self._acquisition] if self._acquisition is not None else [])]

    def loader_options(self) -> dict[str, Any]:
        opts = {**self.base.loader_options(), "with_target_labels": True}
        if self.store is not None:
            opts["target_label_filter"] = self.store.label_filter
        return opts

    # ----------------------------------------------------------------------------------- helpers
    @staticmethod
    def _captured_logits(records, image: torch.Tensor) -> Optional[torch.Tensor]:
        need_grad = torch.is_grad_enabled()
        for inp, out in records:
            if inp is image:
                logits = getattr(out, "logits", None)
                if isinstance(logits, torch.Tensor) and (logits.requires_grad or not need_grad):
                    return logits
        return None

    def _logits(self, model, records, image: torch.Tensor) -> torch.Tensor:
        logits = self._captured_logits(records, image) if self.reuse_forward else None
        return logits if logits is not None else model(image).logits

    # -------------------------------------------------------------------------------- strategy
    def compute_losses(self, model: Segmentor, batch: dict, step: int) -> StepOutput:
        records: list = []
        handle = None
        if self.reuse_forward and hasattr(model, "register_forward_hook"):
            handle = model.register_forward_hook(lambda m, args, out: records.append((args[0] if args else None, out)))
        try:
            out = self.base.compute_losses(model, batch, step)
        finally:
            if handle is not None:
                handle.remove()
        cfg = self.cfg
        losses = dict(out.losses)
        weights = dict(out.weights)
        logs = dict(out.logs)
        task = tuple(out.task)

        tgt = batch.get("target")
        if tgt is not None and (cfg.lambda_labelled or cfg.lambda_negative):
            logits = self._logits(model, records, tgt["image"])
            label = tgt.get("label")
            size = tuple(label.shape[-2:]) if label is not None else tuple(tgt["image"].shape[-2:])
            up = resize_logits(logits, size)
            if cfg.lambda_labelled and label is not None:
                losses["active.ce"], ce_logs = self.active_ce(up, label)
                logs.update(ce_logs)
                weights["active.ce"] = cfg.lambda_labelled
                task = task + ("active.ce",)
                logs["active/labelled_px"] = (label != IGNORE_INDEX).sum().detach().float()
            if cfg.lambda_negative:
                losses["active.neg"] = negative_learning_loss(up)
                weights["active.neg"] = cfg.lambda_negative

        src = batch.get("source")
        if src is not None and cfg.lambda_consistency and src.get("label") is not None:
            logits = self._logits(model, records, src["image"])
            losses["source.lc"] = local_consistency_loss(logits, src["label"])
            weights["source.lc"] = cfg.lambda_consistency
        records.clear()
        return StepOutput(losses=losses, weights=weights, task=task, logs=logs)

    def after_step(self, model: Segmentor, step: int) -> dict[str, torch.Tensor]:
        return self.base.after_step(model, step)

    def eval_model(self, model: Segmentor) -> torch.nn.Module:
        return self.base.eval_model(model)


# ------------------------------------------------------------------------------- acquisition hook
class AcquisitionHook(HookBase):
    """Runs the acquisition round scheduled at each of ``round_steps`` (before that step): scores the
    target train set with the model being trained, selects regions/pixels (RIPU or CBDA), has the
    annotator label them into the store, logs the round's statistics, plots the acquired pixels and
    makes the trainer rebuild its loader (the label filter changed). Rounds already in the store (a
    resumed run) are not repeated: :func:`~balda.active.acquire.acquire_round` resumes from it."""

    def __init__(self, cfg: ActiveConfig, total_iters: int, dataset, store, annotator, mean, std):
        self.cfg = cfg
        self.round_steps = sorted({int(round(f * total_iters)) for f in cfg.rounds})
        self.dataset, self.store, self.annotator = dataset, store, annotator
        self.mean, self.std = mean, std

    def before_step(self, trainer) -> None:
        from balda.core import dist

        if trainer.step not in self.round_steps:
            return
        from balda.active.acquire import acquire_round, plot_round

        r = self.round_steps.index(trainer.step)
        stats = acquire_round(
            trainer.strategy.eval_model(trainer.model),
            self.dataset,
            self.store,
            self.cfg,
            r,
            len(self.round_steps),
            self.mean,
            self.std,
            trainer.device,
            self.annotator,
            progress=trainer.progress and trainer.is_main,
        )
        dist.barrier()
        flat = {f"active/{k}": float(v) for k, v in stats.items() if isinstance(v, (int, float))}
        trainer.logger.write(trainer.step, flat, kind="active")
        if trainer.is_main:
            try:  # acquired-pixel overlays and the labelled-set class histogram of every round so far
                plot_round(self.store, self.dataset, trainer.run_dir / "plots" / f"active_round{r}.png")
            except Exception as e:  # a plot must never stop a run
                log.warning("could not plot acquisition round %d: %s", r, e)
        trainer.reset_loader()


def wrap_active(
    strategy: Strategy, cfg, model: Segmentor, weighting: Optional[WeightingFactory] = None
) -> ActiveStrategy:
    """``active.enabled``: wrap ``strategy`` with the active-learning losses, a label store under
    ``active.out`` (default ``<run>/active``), the oracle annotator over the labelled target train
    split and the acquisition hook."""
    from balda.active.annotator import LabelStore, OracleAnnotator
    from balda.data.datasets import build_dataset

    dataset = build_dataset(replace(cfg.data.target, labelled=True))
    store = LabelStore(Path(cfg.active.out) if cfg.active.out else cfg.run_dir / "active")
    hook = AcquisitionHook(
        cfg.active, cfg.train.iters, dataset, store, OracleAnnotator(dataset), cfg.data.mean, cfg.data.std
    )
    return ActiveStrategy(strategy, model, weighting, cfg.active, store=store, acquisition=hook)


STRATEGY_WRAPPERS.add("active", WrapperSpec("active", lambda cfg: bool(cfg.active.enabled), wrap_active), replace=True)
