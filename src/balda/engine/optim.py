"""Optimiser recipes (docs/baselines.md).

* DeepLabV2: SGD, lr 2.5e-4, momentum 0.9, weight decay 5e-4, poly decay with power 0.9.
* DAFormer: AdamW, lr 6e-5 (decode head x10), betas (0.9, 0.999), weight decay 0.01 with none on
  norm layers and position embeddings, linear warm-up over 1500 iterations from
  ``warmup_ratio * lr``, then poly decay with power 1.

The schedule is a multiplicative factor on every group's base lr:
``f(t) = warmup_ratio + (1 - warmup_ratio) * t / warmup_iters`` for ``t < warmup_iters``, then
``f(t) = (1 - t / iters) ** power`` (``schedule=poly``), or ``f(t) = (1 + gamma t / iters) ** -power``
(``schedule=inv``, ``inv_gamma`` 10, ``inv_power`` 0.75: the DANN/CDAN/MCD classification recipe,
SGD momentum 0.9, weight decay 1e-3, the backbone at 0.1x the head).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from balda.config import OptimConfig


def lr_factor(step: int, iters: int, cfg: OptimConfig) -> float:
    """The schedule factor at iteration ``step`` (0-based) of ``iters`` (see module docstring)."""
    if cfg.warmup_iters > 0 and step < cfg.warmup_iters:
        return cfg.warmup_ratio + (1.0 - cfg.warmup_ratio) * step / cfg.warmup_iters
    if cfg.schedule == "inv":  # Ganin & Lempitsky 2015: (1 + gamma p)^-power, p = t / iters
        return (1.0 + cfg.inv_gamma * step / max(1, iters)) ** (-cfg.inv_power)
    return max(0.0, 1.0 - step / max(1, iters)) ** cfg.power


def param_groups(model: nn.Module, cfg: OptimConfig, extra: Iterable[torch.nn.Parameter] = ()) -> list[dict]:
    """Split trainable parameters into backbone / head groups (head lr x ``head_lr_mult``), without
    weight decay for norm and position-embedding parameters when ``no_decay_norm``. ``extra``
    parameters (e.g. CPSL prototypes) train with the head's lr and no weight decay."""
    no_decay_names = set()
    if cfg.no_decay_norm and hasattr(model, "no_decay_parameter_names"):
        no_decay_names = set(model.no_decay_parameter_names())
    head_ids = {id(p) for p in model.decode_head.parameters()} if hasattr(model, "decode_head") else set()
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = (id(p) in head_ids, name in no_decay_names)
        groups.setdefault(key, []).append(p)
    out = []
    for (is_head, no_decay), params in sorted(groups.items()):
        out.append(
            {
                "params": params,
                "lr": cfg.lr * (cfg.head_lr_mult if is_head else 1.0),
                "weight_decay": 0.0 if no_decay else cfg.weight_decay,
                "name": ("head" if is_head else "backbone") + ("_no_decay" if no_decay else ""),
            }
        )
    extra = [p for p in extra if p.requires_grad]
    if extra:
        out.append({"params": extra, "lr": cfg.lr * cfg.head_lr_mult, "weight_decay": 0.0, "name": "extra"})
    return out


def build_optimizer(model: nn.Module, cfg: OptimConfig, iters: int, extra: Iterable[torch.nn.Parameter] = ()):
    """Return ``(optimizer, scheduler)`` for the recipe in ``cfg`` over ``iters`` iterations (the
    schedule spans ``cfg.schedule_iters`` instead when set: a longer schedule stopped early)."""
    iters = int(cfg.schedule_iters or iters)
    groups = param_groups(model, cfg, extra)
    if cfg.name == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    elif cfg.name == "adamw":
        opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    else:  # pragma: no cover - Literal-validated
        raise ValueError(f"optim.name: unknown optimiser {cfg.name!r}")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: lr_factor(t, iters, cfg))
    return opt, sched
