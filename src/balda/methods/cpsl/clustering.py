"""CPSL's online clustering: class-balanced Sinkhorn-Knopp, the FIFO memory bank of samples, the
self-labeling head of class prototypes, the self-labeling loss and ProDA's prototype consistency.

Li et al., "Class-Balanced Pixel-Level Self-Labeling for Domain Adaptive Semantic Segmentation",
CVPR 2022; Sinkhorn-Knopp as in SwAV (Caron et al., NeurIPS 2020) with the row marginal ``r``
instead of the uniform ``1/K``; prototype consistency from ProDA (Zhang et al., CVPR 2021).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from balda.methods.losses import masked_mean


# -------------------------------------------------------------------------------------- Sinkhorn
@torch.no_grad()
def sinkhorn_balanced(scores: torch.Tensor, r: torch.Tensor, epsilon: float = 0.05, n_iter: int = 3) -> torch.Tensor:
    """Class-balanced Sinkhorn-Knopp assignments (CPSL; SwAV with the row marginal ``r``).

    ``scores`` (N, K) -> ``Q`` (N, K) with rows summing to 1: with ``Q = exp(S^T/eps)`` (K x N),
    ``Q /= sum Q``, then ``n_iter`` times ``Q_kj <- Q_kj r_k / sum_j Q_kj`` (rows to ``r``) and
    ``Q_kj <- Q_kj / (N sum_k Q_kj)`` (columns to ``1/N``); return ``N Q^T``. As ``n_iter`` grows the
    class marginal ``(1/N) sum_i Q_ik`` tends to ``r_k`` (``r`` is normalised to sum 1 here).
    With ``r = 1/K`` this is SwAV's Sinkhorn (Caron et al. 2020).

    Computed in float64 in the log domain (row/column scalings are log-sum-exp subtractions), so it
    is finite for any finite scores and small ``epsilon``; classes with ``r_k = 0`` get 0. No grad.
    """
    S = scores.detach().to(torch.float64)
    N, K = S.shape
    r64 = r.detach().to(device=S.device, dtype=torch.float64).reshape(K)
    r64 = r64 / r64.sum()
    logr = torch.log(r64)[:, None]  # -inf for empty classes
    pos = (r64 > 0)[:, None]
    neg_inf = torch.tensor(float("-inf"), dtype=torch.float64, device=S.device)
    L = S.t() / float(epsilon)  # (K, N) log Q
    L = L - torch.logsumexp(L.reshape(-1), dim=0)
    log_n = math.log(N)
    for _ in range(int(n_iter)):
        L = L + torch.where(pos, logr - torch.logsumexp(L, dim=1, keepdim=True), neg_inf)
        L = L - torch.logsumexp(L, dim=0, keepdim=True) - log_n
    return torch.exp(L + log_n).t().to(scores.dtype if scores.is_floating_point() else torch.float32)


# ----------------------------------------------------------------------------------- memory bank
class MemoryBank(nn.Module):
    """FIFO memory of the last ``size`` vectors of dimension ``dim`` (a ring buffer).

    :meth:`push` writes at the pointer with wrap-around (when more than ``size`` vectors are pushed
    at once only the newest ``size`` are kept); :meth:`valid` returns the filled rows (storage
    order), :meth:`ordered` them oldest first. The pointer and fill count are host integers (no
    device sync), checkpointed as the module's extra state; the storage is a buffer.
    """

    def __init__(self, size: int, dim: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        if size < 0 or dim < 1:
            raise ValueError(f"MemoryBank: size must be >= 0 and dim >= 1, got {size}, {dim}")
        self.size, self.dim = int(size), int(dim)
        self.register_buffer("data", torch.zeros(self.size, self.dim, dtype=dtype))
        self.ptr = 0
        self.count = 0

    def __len__(self) -> int:
        return self.count

    @torch.no_grad()
    def push(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, self.dim).to(self.data.dtype)
        n = x.shape[0]
        if self.size == 0 or n == 0:
            return
        if n >= self.size:
            self.data.copy_(x[n - self.size :])
            self.ptr, self.count = 0, self.size
            return
        end = self.ptr + n
        if end <= self.size:
            self.data[self.ptr : end] = x
        else:
            first = self.size - self.ptr
            self.data[self.ptr :] = x[:first]
            self.data[: n - first] = x[first:]
        self.ptr = end % self.size
        self.count = min(self.count + n, self.size)

    def valid(self) -> torch.Tensor:
        """The filled rows (storage order; all rows once full)."""
        return self.data if self.count >= self.size else self.data[: self.count]

    def ordered(self) -> torch.Tensor:
        """The filled rows, oldest first."""
        if self.count < self.size:
            return self.data[: self.count]
        return torch.cat([self.data[self.ptr :], self.data[: self.ptr]])

    def get_extra_state(self):
        return {"ptr": self.ptr, "count": self.count}

    def set_extra_state(self, state) -> None:
        self.ptr, self.count = int(state["ptr"]), int(state["count"])

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}"


# ---------------------------------------------------------------------------- self-labeling head
class SelfLabelingHead(nn.Module):
    """``K`` learnable class prototypes ``C`` (K, dim), L2-normalised on use, with an EMA copy ``C'``.

    ``prototypes`` is a trainable parameter (the trainer adds it to the optimiser);
    ``prototypes_ema`` a buffer (no grad), ``C' <- b C' + (1 - b) C`` by :meth:`update_ema`.
    """

    def __init__(self, num_classes: int, dim: int, init: Optional[torch.Tensor] = None):
        super().__init__()
        if init is None:
            init = torch.randn(num_classes, dim)
        init = torch.as_tensor(init, dtype=torch.float32)
        if tuple(init.shape) != (num_classes, dim):
            raise ValueError(f"SelfLabelingHead: init of shape {tuple(init.shape)}, expected {(num_classes, dim)}")
        init = F.normalize(init, dim=1)
        self.prototypes = nn.Parameter(init.clone())
        self.register_buffer("prototypes_ema", init.clone())

    def normalized(self, ema: bool = False) -> torch.Tensor:
        """``c^`` (K, dim); with ``ema`` the (detached) EMA prototypes ``c^'``."""
        return F.normalize(self.prototypes_ema if ema else self.prototypes, dim=1)

    def score_map(self, feats_normalized: torch.Tensor, ema: bool = False) -> torch.Tensor:
        """``<f^_j, c^_k>`` for a (B, dim, h, w) map of normalised features -> (B, K, h, w)."""
        return torch.einsum("bchw,kc->bkhw", feats_normalized, self.normalized(ema))

    @torch.no_grad()
    def update_ema(self, momentum: float) -> None:
        self.prototypes_ema.mul_(momentum).add_(self.prototypes.detach(), alpha=1.0 - momentum)


# ---------------------------------------------------------------------------------- SL / consistency
def self_labeling_loss(
    u: torch.Tensor,
    o: torch.Tensor,
    head: SelfLabelingHead,
    prior: torch.Tensor,
    tau: float,
    epsilon: float,
    n_iter: int,
    bank_u: Optional[MemoryBank] = None,
    bank_o: Optional[MemoryBank] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CPSL self-labeling loss of the current samples (module docstring, step 4).

    ``u`` (n, D) normalised teacher features, ``o`` (n, K) normalised teacher logits (both treated
    as constants). ``Q_1 = Sinkhorn([M_u; u] C^^T)``, ``Q_2 = Sinkhorn([M_o; o])`` (rows of the
    current samples), ``L = -(1/n) sum_i sum_k (Q1 + Q2)_ik log softmax_k(<u_i, c^_k>/tau)``; the
    gradient reaches only the prototypes. The banks are *not* updated here. Returns ``(L, marginal)``
    with ``marginal = mean_i Q1_i`` (K,) the class marginal of the current assignments.
    """
    u = u.detach().float()
    o = o.detach().float()
    n = u.shape[0]
    c_hat = head.normalized()
    logp = torch.log_softmax(u @ c_hat.t() / tau, dim=1)
    with torch.no_grad():
        cd = c_hat.detach()
        s1 = u @ cd.t()
        if bank_u is not None and len(bank_u):
            s1 = torch.cat([bank_u.valid().float() @ cd.t(), s1])
        s2 = o
        if bank_o is not None and len(bank_o):
            s2 = torch.cat([bank_o.valid().float(), s2])
        q1 = sinkhorn_balanced(s1, prior, epsilon, n_iter)[-n:]
        q2 = sinkhorn_balanced(s2, prior, epsilon, n_iter)[-n:]
    loss = -((q1 + q2) * logp).sum(dim=1).mean()
    return loss, q1.mean(dim=0)


def prototype_consistency(
    teacher_scores: torch.Tensor, student_scores: torch.Tensor, valid: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """``(1/K) mean_{j valid} sum_k t_jk (log t_jk - log s_jk)`` with ``t = softmax(teacher_scores)``
    (constant) and ``s = softmax(student_scores)`` over dim 1 (ProDA/CPSL consistency; both inputs
    already divided by the temperature). 0 (with a graph) when no position is valid."""
    t_log = torch.log_softmax(teacher_scores.detach().float(), dim=1)
    s_log = torch.log_softmax(student_scores.float(), dim=1)
    kl = (t_log.exp() * (t_log - s_log)).sum(dim=1)
    K = teacher_scores.shape[1]
    if valid is None:
        return kl.mean() / K
    v = valid.to(kl.dtype)
    return masked_mean((kl * v).sum(), v.sum()) / K
