"""Self-distillation stages of CPSL (stages 2-3; Li et al., CVPR 2022, following ProDA, Zhang et al.
CVPR 2021): a fresh student learns from a frozen teacher, the previous stage's model.

Per step, with ``t = softmax`` of the teacher's flip-averaged prediction on the target image
(:func:`flip_averaged_logits`) and ``s = softmax`` of the student's:

* ``source.ce``: CE on the source labels (task group; weighting ``source``);
* ``target.ce``: ``(1/|V|) sum_{i in V} -log s_{i, argmax t_i}`` over the confident pixels
  ``V = {i: max_k t_ik >= threshold}`` (0.95), weight ``lambda_ce``;
* ``target.kl``: ``KL(t || s) = mean_i sum_k t_ik (log t_ik - log s_ik)`` with ``log_softmax`` on
  both sides (the released code hands probabilities to ``F.kl_div``, which expects
  log-probabilities: balda computes the KL the formula means), weight ``lambda_kl``.

The teacher is built from its checkpoint's own saved model config, so it may differ in
architecture from the student; it is stored in the strategy's state so a resumed run needs nothing
else.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple, Optional

import torch
from torch import nn

from balda.config import ModelConfig, _from_dict
from balda.data.labels import IGNORE_INDEX
from balda.methods.base import StepOutput, Strategy, register_strategy
from balda.methods.losses import resize_logits, weighted_cross_entropy
from balda.methods.teachers import TeacherMixin


@dataclass
class DistillConfig:
    """CPSL stages 2-3: self-distillation of a frozen teacher into a fresh student (docs/cpsl.md)."""

    #: The previous stage's checkpoint or run folder (required).
    teacher: Optional[str] = None
    threshold: float = 0.95
    lambda_ce: float = 1.0
    lambda_kl: float = 1.0


class DistillLosses(NamedTuple):
    ce: torch.Tensor  # CE on the confident teacher argmax
    kl: torch.Tensor  # KL(teacher || student)

    @property
    def total(self) -> torch.Tensor:
        return self.ce + self.kl


def distill_losses(
    student_logits: torch.Tensor,
    teacher_logits_flip_avg: torch.Tensor,
    threshold: float = 0.95,
    ignore: int = IGNORE_INDEX,
) -> DistillLosses:
    """Self-distillation losses of CPSL stages 2-3.

    ``t = softmax(teacher logits)`` (flip-averaged, see :func:`flip_averaged_logits`; constant),
    ``s = softmax(student logits)`` (upsampled bilinearly to the teacher's size).
    ``ce = (1/|V|) sum_{i in V} -log s_{i, argmax t_i}`` with ``V = {i : max_k t_ik >= threshold}``;
    ``kl = mean_i sum_k t_ik (log t_ik - log s_ik)`` computed with ``log_softmax`` on both sides
    (the released code passes probabilities where ``F.kl_div`` expects log-probabilities).
    """
    t_log = torch.log_softmax(teacher_logits_flip_avg.detach().float(), dim=1)
    s_logits = resize_logits(student_logits.float(), t_log.shape[-2:])
    conf, lab = t_log.max(dim=1)
    labels = torch.where(conf.exp() >= threshold, lab, torch.full_like(lab, ignore))
    ce = weighted_cross_entropy(s_logits, labels, ignore_index=ignore)
    s_log = torch.log_softmax(s_logits, dim=1)
    kl = (t_log.exp() * (t_log - s_log)).sum(dim=1).mean()
    return DistillLosses(ce, kl)


@torch.no_grad()
def flip_averaged_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``log((softmax(g(x)) + flip(softmax(g(flip(x))))) / 2)``: valid logits of the flip-averaged
    prediction of ``model`` (its softmax is the averaged probability)."""
    p = torch.softmax(model(images).logits.float(), dim=1)
    pf = torch.softmax(model(images.flip(-1)).logits.float(), dim=1).flip(-1)
    return torch.log(((p + pf) / 2).clamp_min(1e-30))


def load_teacher(path: str | Path) -> torch.nn.Module:
    """Build and load the frozen teacher from a balda checkpoint (or a run folder: its final.pt)."""
    from balda.core.checkpoint import CheckpointError, load_checkpoint, load_model_weights, resolve_checkpoint
    from balda.models import build_model

    p = resolve_checkpoint(path)
    ckpt = load_checkpoint(p)
    if "model_config" not in ckpt:
        raise CheckpointError(f"method.distill.teacher: {p} holds no model config; was it written by balda?")
    mcfg = _from_dict(ModelConfig, ckpt["model_config"], "model", str(p))
    teacher = build_model(replace(mcfg, pretrained=None))
    load_model_weights(teacher, ckpt["model"], p)
    return teacher.eval().requires_grad_(False)


@register_strategy(
    "distill",
    config=DistillConfig,
    description="CPSL stages 2-3: self-distillation of a frozen teacher into a fresh student",
)
class DistillStrategy(TeacherMixin, Strategy):
    """Self-distillation (see module docstring): ``DistillStrategy(model, weighting, cfg, num_classes,
    teacher=None)``; the teacher is loaded from ``cfg.teacher`` unless given."""

    def __init__(self, model, weighting, cfg: DistillConfig, num_classes: int, teacher: torch.nn.Module | None = None):
        super().__init__(model, weighting)
        if teacher is None:
            if not cfg.teacher:
                raise ValueError("method.distill.teacher: set it to the previous stage's checkpoint or run folder")
            teacher = load_teacher(cfg.teacher)
        if getattr(teacher, "num_classes", num_classes) != num_classes:
            raise ValueError(
                f"method.distill.teacher predicts {teacher.num_classes} classes, the student {num_classes}"
            )
        self.cfg = cfg
        self.teacher = teacher.eval().requires_grad_(False)
        self.source_ce = self.make_ce("source")

    @classmethod
    def from_config(cls, cfg, model, weighting=None):
        return cls(model, weighting, cfg.method.distill, cfg.model.num_classes)

    def compute_losses(self, model, batch, step):
        src, tgt = batch["source"], batch["target"]
        src_ce, logs = self.source_ce(model(src["image"]).logits, src["label"])
        t_logits = flip_averaged_logits(self.teacher, tgt["image"])
        d = distill_losses(model(tgt["image"]).logits, t_logits, threshold=self.cfg.threshold)
        logs["distill/confident"] = (t_logits.softmax(1).amax(1) >= self.cfg.threshold).float().mean()
        return StepOutput(
            losses={"source.ce": src_ce, "target.ce": d.ce, "target.kl": d.kl},
            weights={"target.ce": self.cfg.lambda_ce, "target.kl": self.cfg.lambda_kl},
            task=("source.ce",),
            logs=logs,
        )
