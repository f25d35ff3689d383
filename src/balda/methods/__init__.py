"""UDA strategies: each turns a (source, target) batch into named losses (see :mod:`.base`)."""
from __future__ import annotations

from typing import Optional

import torch

from balda.config import Config
from balda.methods.base import StepOutput, Strategy, WeightingFactory
from balda.models.base import Segmentor

__all__ = ["Strategy", "StepOutput", "build_strategy"]


def build_strategy(cfg: Config, model: Segmentor, weighting: Optional[WeightingFactory] = None,
                   imnet_model: Optional[torch.nn.Module] = None) -> Strategy:
    """Build the strategy named by ``cfg.method.name`` (wrapped for active learning if enabled)."""
    name = cfg.method.name
    K = cfg.model.num_classes
    mean = torch.tensor(cfg.data.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.data.std).view(1, 3, 1, 1)
    seed = cfg.train.seed
    if name == "source_only":
        from balda.methods.supervised import SourceOnlyStrategy

        strategy: Strategy = SourceOnlyStrategy(model, weighting)
    elif name == "oracle":
        from balda.methods.supervised import OracleStrategy

        strategy = OracleStrategy(model, weighting)
    elif name == "self_training":
        from balda.methods.self_training import SelfTrainingStrategy

        strategy = SelfTrainingStrategy(model, weighting, cfg.method.self_training, K, mean, std, seed=seed,
                                        imnet_model=imnet_model)
    elif name == "adversarial":
        from balda.methods.adversarial import AdversarialStrategy

        strategy = AdversarialStrategy(model, weighting, cfg.method.adversarial, K, mean, std, seed=seed,
                                       max_iters=cfg.train.iters)
    elif name == "minent":
        from balda.methods.minent import MinEntStrategy

        strategy = MinEntStrategy(model, weighting, cfg.method.minent, K, mean, std, seed=seed)
    elif name == "cpsl":
        from balda.methods.cpsl import CPSLStrategy

        strategy = CPSLStrategy(model, weighting, cfg.method.cpsl, K, mean, std, seed=seed)
    elif name == "distill":
        from balda.methods.distill import DistillStrategy

        strategy = DistillStrategy(model, weighting, cfg.method.distill, K, mean, std, seed=seed)
    else:  # pragma: no cover - Literal-validated by the config
        raise ValueError(f"method.name: unknown strategy {name!r}")
    if cfg.active.enabled:
        from balda.methods.active import ActiveStrategy

        strategy = ActiveStrategy(strategy, model, weighting, cfg.active)
    return strategy
