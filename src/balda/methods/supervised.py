"""Supervised reference strategies: source-only and the target oracle.

* Source-only: ``L = CE(f(x_s), y_s)`` - the lower bound of every UDA table.
* Target oracle: ``L = CE(f(x_t), y_t)`` with target ground truth - the upper bound ("fully
  supervised"), trained with the same model, recipe and iterations.
"""

from __future__ import annotations

from balda.methods.base import StepOutput, Strategy, register_strategy


@register_strategy("source_only", description="supervised on the source only (the lower bound)")
class SourceOnlyStrategy(Strategy):
    """Source-only training: ``L = CE(f(x_s), y_s)``."""

    def __init__(self, model, weighting=None):
        super().__init__(model, weighting)
        self.source_ce = self.make_ce("source")

    def compute_losses(self, model, batch, step):
        src = batch["source"]
        loss, logs = self.source_ce(model(src["image"]).logits, src["label"])
        return StepOutput(losses={"source.ce": loss}, task=("source.ce",), logs=logs)


@register_strategy("oracle", description="supervised on the labelled target (the upper bound)")
class OracleStrategy(Strategy):
    """Target oracle: ``L = CE(f(x_t), y_t)`` with the target ground truth."""

    uses_target_labels = True

    def __init__(self, model, weighting=None):
        super().__init__(model, weighting)
        self.target_ce = self.make_ce("target")

    def compute_losses(self, model, batch, step):
        tgt = batch["target"]
        loss, logs = self.target_ce(model(tgt["image"]).logits, tgt["label"])
        return StepOutput(losses={"target.ce": loss}, task=("target.ce",), logs=logs)
