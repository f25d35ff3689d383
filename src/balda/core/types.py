"""Types shared across layers: the named losses of one training step and the class-weighting factory.

A strategy (:mod:`balda.methods`) returns a :class:`StepOutput`; a combiner
(:mod:`balda.balancing.combine`) turns it into gradients; the trainer logs it. Defined here, at the
bottom, so that none of them imports another's layer for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

__all__ = ["StepOutput", "WeightingFactory"]

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

    For strategies with several optimisation phases per iteration (MCD): ``frozen`` lists the
    parameters this phase must not update (their gradients are dropped before the optimiser step:
    torch optimisers skip parameters without a gradient, momentum included); ``shared``, when set,
    replaces the parameters over which a harmonizing combiner measures the conflict.
    """

    losses: dict[str, torch.Tensor]
    weights: dict[str, float] = field(default_factory=dict)
    task: tuple[str, ...] = ("source.ce",)
    logs: dict[str, torch.Tensor] = field(default_factory=dict)
    frozen: tuple[torch.nn.Parameter, ...] = ()
    shared: Optional[tuple[torch.nn.Parameter, ...]] = None

    def weight(self, name: str) -> float:
        return self.weights.get(name, 1.0)

    def total(self) -> torch.Tensor:
        return sum(self.weight(n) * v for n, v in self.losses.items())
