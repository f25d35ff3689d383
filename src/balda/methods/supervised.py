"""Supervised reference strategies: source-only and the target oracle.

* Source-only: ``L = CE(f(x_s), y_s)`` — the lower bound of every UDA table.
* Target oracle: ``L = CE(f(x_t), y_t)`` with target ground truth — the upper bound ("fully
  supervised"), trained with the same model, recipe and iterations.
"""
from __future__ import annotations

from balda.balancing.class_weights import logged_weights
from balda.methods.base import Strategy, StepOutput
from balda.methods.losses import weighted_cross_entropy


class SourceOnlyStrategy(Strategy):
    def __init__(self, model, weighting=None):
        super().__init__(model, weighting)
        self.source_weighting = self.make_weighting("source")

    def compute_losses(self, model, batch, step):
        src = batch["source"]
        logits = model(src["image"]).logits
        loss, logs = _ce(logits, src["label"], self.source_weighting, "source")
        return StepOutput(losses={"source.ce": loss}, task=("source.ce",), logs=logs)


class OracleStrategy(Strategy):
    uses_target_labels = True

    def __init__(self, model, weighting=None):
        super().__init__(model, weighting)
        self.target_weighting = self.make_weighting("target")

    def compute_losses(self, model, batch, step):
        tgt = batch["target"]
        logits = model(tgt["image"]).logits
        loss, logs = _ce(logits, tgt["label"], self.target_weighting, "target")
        return StepOutput(losses={"target.ce": loss}, task=("target.ce",), logs=logs)


def _ce(logits, labels, weighting, term: str):
    """CE with the term's class weighting (computed from logits at label resolution)."""
    from balda.methods.losses import resize_logits

    logs = {}
    weights = None
    if weighting is not None:
        up = resize_logits(logits, labels.shape[-2:])
        weights = weighting(up.detach(), labels)
        if weights is not None:
            logs[f"weights/{term}"] = logged_weights(weights, labels)
        return weighted_cross_entropy(up, labels, class_weights=weights), logs
    return weighted_cross_entropy(logits, labels), logs
