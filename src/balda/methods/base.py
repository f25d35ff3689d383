"""The strategy interface: a UDA method turns one (source, target) batch into named losses.

A strategy does not own the training loop. For each step the trainer calls
:meth:`Strategy.compute_losses` with the segmentor and the batch, combines the returned losses
(plain weighted sum, or gradient harmonization between the *task* group and the *alignment* group,
see :mod:`balda.balancing.gh`), steps the optimiser, then calls :meth:`Strategy.after_step`
(EMA teacher update, discriminator update, ...).

Batches are dicts: ``batch["source"]`` and ``batch["target"]`` each hold ``image`` (B,3,H,W,
normalised float), ``label`` (B,H,W long, 255 = ignore; absent or all-255 for unlabelled target),
``index`` (B,) dataset indices. Strategies keep their own state (teacher, discriminator, its
optimiser via ``get_extra_state``) as submodules, so ``state_dict`` checkpoints them.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from balda.core.types import StepOutput, WeightingFactory
from balda.models.base import Segmentor

class Strategy(nn.Module):
    """Base class of UDA strategies (see module docstring)."""

    #: Whether the strategy reads target labels (only the oracle and active learning do).
    uses_target_labels: bool = False

    def __init__(self, model: Segmentor, weighting: WeightingFactory | None = None):
        super().__init__()
        self._weighting_factory = weighting or (lambda term: None)
        self.num_classes = model.num_classes

    def make_weighting(self, term: str) -> Optional[nn.Module]:
        """Class weighting for loss term ``term`` (or None); register the result as a submodule."""
        return self._weighting_factory(term)

    def compute_losses(self, model: Segmentor, batch: dict, step: int) -> StepOutput:  # pragma: no cover
        raise NotImplementedError

    def after_step(self, model: Segmentor, step: int) -> dict[str, torch.Tensor]:
        """Hook run after the segmentor's optimiser step; returns extra logs."""
        return {}

    def eval_model(self, model: Segmentor) -> nn.Module:
        """The network to evaluate (the student by default)."""
        return model
