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

from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import nn

from balda.core.registry import register_strategy
from balda.core.types import StepOutput, WeightingFactory
from balda.models.base import Segmentor

if TYPE_CHECKING:  # pragma: no cover
    from balda.config import Config

__all__ = ["Strategy", "StepOutput", "WeightingFactory", "register_strategy", "unwrap"]


def unwrap(model: nn.Module) -> nn.Module:
    """The segmentor inside a DDP (or DataParallel) wrapper, or the model itself."""
    return getattr(model, "module", model)


class Strategy(nn.Module):
    """Base class of UDA strategies (see module docstring).

    A strategy is registered with :func:`register_strategy` (name, config dataclass) and built by
    :meth:`from_config`, which receives the whole run config and builds whatever the method needs
    (its teacher, an ImageNet model, prepared files); the trainer never names a method. Besides
    :meth:`compute_losses`, a strategy tells the trainer what it needs through:

    * :meth:`optimized_with_model` - its own parameters trained by the segmentor's optimiser (CPSL's
      prototypes); parameters with their own optimiser (a discriminator) are not listed;
    * :meth:`hooks` - trainer hooks (:class:`balda.core.hooks.HookBase`), e.g. acquisition rounds;
    * :meth:`loader_options` - options of the training loader (target labels, a label filter);
    * :meth:`after_step`, :meth:`eval_model`.
    """

    #: Whether the strategy reads target labels (only the oracle and active learning do).
    uses_target_labels: bool = False
    #: The name it is registered under (set by :func:`register_strategy`).
    registered_name: str = ""

    def __init__(self, model: Segmentor, weighting: WeightingFactory | None = None):
        super().__init__()
        self._weighting_factory = weighting or (lambda term: None)
        self.num_classes = model.num_classes

    @classmethod
    def from_config(cls, cfg: Config, model: Segmentor, weighting: WeightingFactory | None = None) -> Strategy:
        """Build the strategy for ``cfg`` (default: ``cls(model, weighting)``); strategies with options
        read them from ``cfg.method.<name>``."""
        return cls(model, weighting)

    def register_normalization(self, mean, std) -> None:
        """Keep the input normalisation (``x = (rgb - mean) / std``, 0..255 units) as (1, 3, 1, 1)
        buffers ``mean`` / ``std`` on the strategy's device, for the photometric augmentations that
        work on RGB (not checkpointed: they come from the config)."""
        self.register_buffer(
            "mean", torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1).clone(), persistent=False
        )
        self.register_buffer(
            "std", torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1).clone(), persistent=False
        )

    def make_weighting(self, term: str) -> Optional[nn.Module]:
        """Class weighting for loss term ``term`` (or None); register the result as a submodule."""
        return self._weighting_factory(term)

    def make_ce(self, term: str) -> nn.Module:
        """The cross-entropy of loss term ``term`` with its class weighting and logging
        (:class:`~balda.methods.losses.WeightedCE`); assign it to an attribute."""
        from balda.methods.losses import WeightedCE

        return WeightedCE(term, self.make_weighting(term))

    def phases(self, step: int) -> tuple[str, ...]:
        """The optimisation phases of iteration ``step``, each one optimiser step on its own losses
        (:meth:`compute_phase`). One phase for almost every method; MCD has its A / B / C steps."""
        return ("main",)

    def compute_phase(self, model: Segmentor, batch: dict, step: int, phase: str) -> StepOutput:
        """The losses of one phase (default: :meth:`compute_losses`, the only phase)."""
        return self.compute_losses(model, batch, step)

    def optimized_with_model(self) -> list[nn.Parameter]:
        """The strategy's own parameters trained by the segmentor's optimiser (default: none)."""
        return []

    def hooks(self) -> list[Any]:
        """Trainer hooks this strategy needs (:class:`balda.core.hooks.HookBase`; default: none)."""
        return []

    def loader_options(self) -> dict[str, Any]:
        """Keyword options of :func:`balda.data.loaders.build_train_loader` (target labels when
        :attr:`uses_target_labels`)."""
        return {"with_target_labels": self.uses_target_labels}

    def compute_losses(self, model: Segmentor, batch: dict, step: int) -> StepOutput:  # pragma: no cover
        raise NotImplementedError

    def after_step(self, model: Segmentor, step: int) -> dict[str, torch.Tensor]:
        """Hook run after the segmentor's optimiser step; returns extra logs."""
        return {}

    def eval_model(self, model: Segmentor) -> nn.Module:
        """The network to evaluate (the student by default)."""
        return model
