"""Teachers of the self-training strategies: an EMA copy of the student, or a frozen model.

* :func:`frozen_copy` - a deep copy of the (unwrapped) student with no gradients, in eval mode;
* :func:`ema_alpha` / :func:`ema_update` - the mean-teacher update ``theta' <- a theta' + (1-a) theta``
  (Tarvainen & Valpola, NeurIPS 2017) with DACS/DAFormer's ramp ``a_t = min(1 - 1/(t+1), cap)``;
* :class:`TeacherMixin` - a strategy holding ``self.teacher`` keeps it in eval mode whatever
  ``.train()`` is called with (BatchNorm statistics and dropout stay in inference mode).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from balda.methods.base import unwrap

__all__ = ["TeacherMixin", "ema_alpha", "ema_update", "frozen_copy"]


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` (unwrapped from DDP) without gradients, in eval mode."""
    teacher = copy.deepcopy(unwrap(model))
    teacher.requires_grad_(False)
    return teacher.eval()


class TeacherMixin:
    """For a strategy (an ``nn.Module``) with a ``teacher`` attribute: ``train(mode)`` leaves the
    teacher in eval mode."""

    teacher: nn.Module

    def train(self, mode: bool = True):  # noqa: D401 - nn.Module API
        super().train(mode)  # type: ignore[misc]
        self.teacher.eval()
        return self


def ema_alpha(step: int, cap: float) -> float:
    """``a_t = min(1 - 1/(t + 1), cap)`` for the 0-based iteration index ``t``."""
    return min(1.0 - 1.0 / (int(step) + 1), float(cap))


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, alpha: float) -> None:
    """``theta' <- alpha theta' + (1 - alpha) theta`` for every parameter and floating buffer
    (integer buffers, e.g. BatchNorm's ``num_batches_tracked``, are copied). Fused foreach ops,
    no host sync."""
    tp, sp = list(teacher.parameters()), list(student.parameters())
    if len(tp) != len(sp):
        raise RuntimeError(f"EMA teacher has {len(tp)} parameters, the student {len(sp)}")
    if tp:
        torch._foreach_mul_(tp, alpha)
        torch._foreach_add_(tp, sp, alpha=1.0 - alpha)
    tb, sb = list(teacher.buffers()), list(student.buffers())
    if len(tb) != len(sb):
        raise RuntimeError(f"EMA teacher has {len(tb)} buffers, the student {len(sb)}")
    for t, s in zip(tb, sb):
        if t.is_floating_point():
            t.mul_(alpha).add_(s, alpha=1.0 - alpha)
        else:
            t.copy_(s)
