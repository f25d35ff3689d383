"""Self-distillation stages of CPSL (stages 2-3; Li et al., CVPR 2022, following ProDA, Zhang et al.
CVPR 2021): a fresh student learns from a frozen teacher, the previous stage's model.

Per step, with ``t = softmax`` of the teacher's flip-averaged prediction on the target image
(:func:`balda.methods.cpsl.flip_averaged_logits`) and ``s = softmax`` of the student's:

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

from dataclasses import replace
from pathlib import Path

import torch

from balda.balancing.class_weights import logged_weights
from balda.config import DistillConfig, ModelConfig, _from_dict
from balda.methods.base import StepOutput, Strategy
from balda.methods.cpsl import distill_losses, flip_averaged_logits
from balda.methods.losses import resize_logits, weighted_cross_entropy


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


class DistillStrategy(Strategy):
    def __init__(self, model, weighting, cfg: DistillConfig, num_classes: int, mean, std, seed: int = 0,
                 teacher: torch.nn.Module | None = None):
        super().__init__(model, weighting)
        if teacher is None:
            if not cfg.teacher:
                raise ValueError("method.distill.teacher: set it to the previous stage's checkpoint or run folder")
            teacher = load_teacher(cfg.teacher)
        if getattr(teacher, "num_classes", num_classes) != num_classes:
            raise ValueError(f"method.distill.teacher predicts {teacher.num_classes} classes, the student "
                             f"{num_classes}")
        self.cfg = cfg
        self.teacher = teacher.eval().requires_grad_(False)
        self.source_weighting = self.make_weighting("source")

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # frozen: BatchNorm statistics and dropout stay in inference mode
        return self

    def compute_losses(self, model, batch, step):
        src, tgt = batch["source"], batch["target"]
        s_logits = resize_logits(model(src["image"]).logits, src["label"].shape[-2:])
        weights, logs = None, {}
        if self.source_weighting is not None:
            weights = self.source_weighting(s_logits.detach(), src["label"])
            if weights is not None:
                logs["weights/source"] = logged_weights(weights, src["label"])
        src_ce = weighted_cross_entropy(s_logits, src["label"], class_weights=weights)
        t_logits = flip_averaged_logits(self.teacher, tgt["image"])
        d = distill_losses(model(tgt["image"]).logits, t_logits, threshold=self.cfg.threshold)
        logs["distill/confident"] = (t_logits.softmax(1).amax(1) >= self.cfg.threshold).float().mean()
        return StepOutput(losses={"source.ce": src_ce, "target.ce": d.ce, "target.kl": d.kl},
                          weights={"target.ce": self.cfg.lambda_ce, "target.kl": self.cfg.lambda_kl},
                          task=("source.ce",), logs=logs)
