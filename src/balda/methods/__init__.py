"""UDA strategies: each turns a (source, target) batch into named losses (see :mod:`.base`).

Every strategy is registered by its own module (:func:`~balda.core.registry.register_strategy`):
importing this package imports the built-in ones; :func:`build_strategy` looks the configured name
up in the registry and applies the registered wrappers (active learning), so neither this package
nor the trainer names a method.
"""

from __future__ import annotations

from typing import Optional

from balda.config import Config
from balda.core.registry import STRATEGIES, STRATEGY_WRAPPERS
from balda.methods import adversarial, cdan, cpsl, dann, mcd, minent, panoptic, self_training, supervised  # noqa: F401
from balda.methods.base import StepOutput, Strategy, WeightingFactory, register_strategy
from balda.models.base import Segmentor

__all__ = ["Strategy", "StepOutput", "build_strategy", "register_strategy"]


def build_strategy(cfg: Config, model: Segmentor, weighting: Optional[WeightingFactory] = None) -> Strategy:
    """The strategy registered as ``cfg.method.name``, built by its ``from_config``, then wrapped by
    every registered wrapper whose condition holds (``active.enabled`` -> active learning)."""
    spec = STRATEGIES.get(cfg.method.name, "method.name")
    strategy = spec.cls.from_config(cfg, model, weighting)
    for _, wrapper in STRATEGY_WRAPPERS.items():
        if wrapper.enabled(cfg):
            strategy = wrapper.wrap(strategy, cfg, model, weighting)
    return strategy
