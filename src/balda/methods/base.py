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

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from balda.models.base import Segmentor

#: Builds a fresh class-weighting module for a loss term ("source", "target", "active").
WeightingFactory = Callable[[str], Optional[nn.Module]]


@dataclass
class StepOutput:
    """Named loss terms of one step.

    ``losses[name]`` are the *unweighted* terms; ``weights[name]`` their trade-off coefficients
    (default 1). The base update minimises ``sum_n weights[n] * losses[n]``. ``task`` names the
    terms of the task group (supervised segmentation); every other term is alignment.
    ``logs`` holds detached scalars (tensors kept on the device; the trainer syncs them only when
    it logs).
    """

    losses: dict[str, torch.Tensor]
    weights: dict[str, float] = field(default_factory=dict)
    task: tuple[str, ...] = ("source.ce",)
    logs: dict[str, torch.Tensor] = field(default_factory=dict)

    def weight(self, name: str) -> float:
        return self.weights.get(name, 1.0)

    def total(self) -> torch.Tensor:
        return sum(self.weight(n) * v for n, v in self.losses.items())


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
