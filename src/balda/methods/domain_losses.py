"""Losses and small modules of feature-level domain adaptation for image classification.

The building blocks of DANN (Ganin & Lempitsky, "Unsupervised Domain Adaptation by Backpropagation",
ICML 2015; Ganin et al., JMLR 2016), CDAN / CDAN+E (Long et al., "Conditional Adversarial Domain
Adaptation", NeurIPS 2018), MCD (Saito et al., "Maximum Classifier Discrepancy for Unsupervised
Domain Adaptation", CVPR 2018) and MinEnt (Grandvalet & Bengio, NeurIPS 2004), as GH's released code
and tllib use them (docs/classification.md). No strategy lives here: a strategy composes

* DANN: ``L_a = domain_adversarial_loss(D(grl(f_s)), D(grl(f_t)))``;
* CDAN: ``h = cdan_map(f, softmax(z).detach())``, ``L_a = domain_adversarial_loss(D(grl(h_s)), D(grl(h_t)))``;
* CDAN+E: the same with ``w_s, w_t = cdan_entropy_weights(z_s, z_t)`` passed as weights;
* MCD: ``mcd_discrepancy(z1_t, z2_t)`` (maximised by the heads, minimised by the generator);
* MinEnt: ``minent_loss(z_t)``.

Conventions: the discriminator outputs *logits* (the BCE is computed with ``softplus``, stable for
any logit) and the domain label is 1 for source, 0 for target (tllib; the segmentation
discriminator of :mod:`balda.methods.adversarial` uses the opposite labels, which changes nothing
for the game). Losses are computed in float32 whatever the input dtype.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "grad_reverse",
    "GradientReversal",
    "dann_lambda",
    "DomainDiscriminator",
    "domain_adversarial_loss",
    "domain_accuracy",
    "multilinear_map",
    "RandomizedMultilinearMap",
    "CDANMap",
    "entropy",
    "cdan_entropy_weights",
    "mcd_discrepancy",
    "minent_loss",
    "SOURCE_DOMAIN",
    "TARGET_DOMAIN",
]

#: Domain labels of the classification discriminator (tllib: source 1, target 0).
SOURCE_DOMAIN = 1.0
TARGET_DOMAIN = 0.0


# -------------------------------------------------------------------------------- gradient reversal
class _GradReverse(torch.autograd.Function):
    """``R_lambda(x) = x`` forward, ``dR/dx = -lambda I`` backward (Ganin & Lempitsky 2015, eq. 6)."""

    @staticmethod
    def forward(ctx, x: Tensor, lambd):
        ctx.lambd = lambd
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        lambd = ctx.lambd
        if isinstance(lambd, Tensor):
            lambd = lambd.to(device=grad.device, dtype=grad.dtype)
        return -lambd * grad, None


def grad_reverse(x: Tensor, lambd: Union[float, Tensor] = 1.0) -> Tensor:
    """Gradient reversal ``R_lambda``: returns ``x`` unchanged; in the backward pass the incoming
    gradient is multiplied by ``-lambda`` (Ganin & Lempitsky, ICML 2015, eq. 6):

        R_lambda(x) = x,    dL/dx = -lambda * dL/dR.

    ``lambd`` is a float or a (detached) scalar tensor; it receives no gradient."""
    return _GradReverse.apply(x, lambd)


class GradientReversal(nn.Module):
    """Module form of :func:`grad_reverse` whose coefficient ``lambd`` a strategy updates every step
    (e.g. ``grl.lambd = dann_lambda(step / iters)``). Holds no parameters or buffers."""

    def __init__(self, lambd: float = 1.0):
        super().__init__()
        self.lambd = float(lambd)

    def forward(self, x: Tensor) -> Tensor:
        return grad_reverse(x, self.lambd)

    def extra_repr(self) -> str:
        return f"lambd={self.lambd:.4g}"


def dann_lambda(p: Union[float, Tensor], gamma: float = 10.0, high: float = 1.0) -> Union[float, Tensor]:
    """The DANN schedule of the reversal coefficient (Ganin et al., JMLR 2016, sec. 5.2.2):

        lambda(p) = high * (2 / (1 + exp(-gamma * p)) - 1),    p = iter / iters in [0, 1],

    rising from 0 at ``p = 0`` to ``high * (2 / (1 + e^-gamma) - 1)`` (0.99991 for gamma = 10) at
    ``p = 1``; ``high`` is the trade-off (default 1). Works on floats and tensors."""
    if isinstance(p, Tensor):
        return high * (2.0 / (1.0 + torch.exp(-gamma * p)) - 1.0)
    return high * (2.0 / (1.0 + math.exp(-gamma * float(p))) - 1.0)


# ------------------------------------------------------------------------------------- discriminator
class DomainDiscriminator(nn.Module):
    """The DANN / CDAN domain classifier ``D``: ``Linear(in, h) -> ReLU -> Dropout(p) -> Linear(h, h)
    -> ReLU -> Dropout(p) -> Linear(h, 1)`` with ``h = 1024``, ``p = 0.5`` (Ganin et al. 2016; Long et
    al. 2018). ``forward(x)`` with ``x`` (B, in_features) returns the domain *logits* (B,);
    ``sigmoid(D(x))`` is the probability that ``x`` comes from the source."""

    def __init__(self, in_features: int, hidden: int = 1024, dropout: float = 0.5):
        super().__init__()
        if in_features < 1 or hidden < 1:
            raise ValueError(f"DomainDiscriminator needs in_features, hidden >= 1, got {in_features}, {hidden}")
        self.in_features = int(in_features)
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1)).squeeze(1)


def _at_least_fp32(x: Tensor) -> Tensor:
    """``x`` in float32 when it is a half type (autocast), else unchanged (float64 stays float64)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _weighted_bce(logits: Tensor, target: float, weights: Optional[Tensor]) -> Tensor:
    """``sum_i w_i BCE(sigmoid(z_i), y)`` with ``w_i = 1/n`` when ``weights`` is None, where
    ``BCE(sigmoid(z), 1) = softplus(-z)`` and ``BCE(sigmoid(z), 0) = softplus(z)``."""
    z = _at_least_fp32(logits).reshape(-1)
    bce = F.softplus(-z) if target == 1.0 else F.softplus(z)
    if weights is None:
        return bce.mean()
    w = weights.reshape(-1).to(bce.dtype)
    if w.numel() != bce.numel():
        raise ValueError(f"domain loss: {w.numel()} weights for {bce.numel()} discriminator outputs")
    return (w * bce).sum()


def domain_adversarial_loss(
    d_source: Tensor, d_target: Tensor, w_source: Optional[Tensor] = None, w_target: Optional[Tensor] = None
) -> Tensor:
    """The DANN / CDAN domain loss on discriminator logits (Ganin et al. 2016, eq. 9; Long et al. 2018, eq. 7):

        L_a = 1/2 [ sum_i w^s_i BCE(D(f^s_i), 1) + sum_j w^t_j BCE(D(f^t_j), 0) ],

    with ``BCE(p, y) = -y log p - (1 - y) log(1 - p)`` and ``p = sigmoid(logit)``. Without weights
    ``w^s_i = 1/n_s`` and ``w^t_j = 1/n_t`` (the mean BCE of each domain, averaged); CDAN+E passes the
    per-domain normalised entropy weights of :func:`cdan_entropy_weights` (each summing to 1), which
    is the released CDAN code's ``sum(w * BCE) / sum(w)`` with ``sum(w) = 2``. ``D`` minimises
    ``L_a``; placed behind a gradient reversal the features maximise it."""
    return 0.5 * (_weighted_bce(d_source, SOURCE_DOMAIN, w_source) + _weighted_bce(d_target, TARGET_DOMAIN, w_target))


@torch.no_grad()
def domain_accuracy(d_source: Tensor, d_target: Tensor) -> Tensor:
    """Fraction of samples the discriminator assigns to their domain, ``mean([z_s > 0] ++ [z_t <= 0])``
    (0.5 = the domains are indistinguishable to ``D``); for logging."""
    hits = torch.cat([(d_source.reshape(-1) > 0), (d_target.reshape(-1) <= 0)]).float()
    return hits.mean()


# ------------------------------------------------------------------------------------------ CDAN maps
def multilinear_map(f: Tensor, g: Tensor) -> Tensor:
    """CDAN's multilinear map ``T(f, g) = f (x) g`` (Long et al. 2018, eq. 4), flattened:

        T(f, g)_{b, i K + k} = f_{b, i} g_{b, k},    f (B, d_f), g (B, K)  ->  (B, d_f K).

    (The released CDAN code builds ``g (x) f``, a fixed permutation of the same coordinates, which a
    discriminator with a linear first layer cannot tell apart.)"""
    if f.dim() != 2 or g.dim() != 2 or f.shape[0] != g.shape[0]:
        raise ValueError(f"multilinear_map expects f (B, d) and g (B, K), got {tuple(f.shape)} and {tuple(g.shape)}")
    return torch.einsum("bi,bk->bik", f, g).reshape(f.shape[0], -1)


class RandomizedMultilinearMap(nn.Module):
    """CDAN's randomized multilinear map (Long et al. 2018, eq. 5):

        T_odot(f, g) = (R_f f) * (R_g g) / sqrt(d),

    where ``*`` is the element-wise product and ``R_f`` (d x d_f), ``R_g`` (d x K) are fixed
    matrices with i.i.d. N(0, 1) entries (``d = output_dim``, 1024), drawn once from ``seed`` and
    kept as buffers (saved with the model, moved with ``.to``, never trained). In code, with row
    vectors: ``(f @ Rf) * (g @ Rg) / sqrt(d)``, ``Rf`` (d_f, d), ``Rg`` (K, d). Its inner products
    approximate those of :func:`multilinear_map` in expectation:
    ``E <T_odot(f, g), T_odot(f', g')> = <f, f'> <g, g'>``."""

    def __init__(self, feature_dim: int, num_classes: int, output_dim: int = 1024, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(int(seed))
        self.output_dim = int(output_dim)
        self.register_buffer("Rf", torch.randn(feature_dim, output_dim, generator=gen))
        self.register_buffer("Rg", torch.randn(num_classes, output_dim, generator=gen))

    def forward(self, f: Tensor, g: Tensor) -> Tensor:
        Rf, Rg = self.Rf.to(f.dtype), self.Rg.to(g.dtype)
        return (f @ Rf) * (g @ Rg) / math.sqrt(self.output_dim)


class CDANMap(nn.Module):
    """The discriminator input of CDAN: :func:`multilinear_map` ``f (x) g`` when
    ``d_f K <= max_dim`` (4096, as in the paper), else :class:`RandomizedMultilinearMap` with
    ``output_dim`` (1024); ``randomized`` forces the choice. ``out_features`` is the size of the map
    (the ``in_features`` of the :class:`DomainDiscriminator`)."""

    def __init__(
        self,
        feature_dim: int,
        num_classes: int,
        randomized: Optional[bool] = None,
        output_dim: int = 1024,
        max_dim: int = 4096,
        seed: int = 0,
    ):
        super().__init__()
        self.randomized = bool(feature_dim * num_classes > max_dim) if randomized is None else bool(randomized)
        self.random_map = (
            RandomizedMultilinearMap(feature_dim, num_classes, output_dim, seed) if self.randomized else None
        )
        self.out_features = int(output_dim) if self.randomized else int(feature_dim * num_classes)

    def forward(self, f: Tensor, g: Tensor) -> Tensor:
        return self.random_map(f, g) if self.random_map is not None else multilinear_map(f, g)


# ---------------------------------------------------------------------------------- entropy and MCD
def entropy(logits: Tensor, normalise: bool = False) -> Tensor:
    """Per-sample prediction entropy ``H(p_b) = -sum_k p_bk log p_bk`` with ``p_b = softmax(z_b)``
    over dim 1, in nats (``/ log K`` with ``normalise``, so it lies in [0, 1]). Computed from
    ``log_softmax`` in float32: finite for any logits. (B, K) -> (B,)."""
    logp = F.log_softmax(_at_least_fp32(logits), dim=1)
    h = -(logp.exp() * logp).sum(dim=1)
    if normalise:
        h = h / math.log(logits.shape[1])
    return h


def cdan_entropy_weights(logits_source: Tensor, logits_target: Tensor) -> tuple[Tensor, Tensor]:
    """CDAN+E's entropy conditioning (Long et al. 2018, eq. 8): per-sample weights

        w_b = 1 + exp(-H(g_b)),    g_b = softmax(z_b),

    normalised within each domain to sum to 1 (``w^s / sum w^s`` and ``w^t / sum w^t``, as the
    released CDAN code does), so confident (low-entropy) samples count more in
    :func:`domain_adversarial_loss`. Returned detached (tllib detaches ``g``); shapes (n_s,), (n_t,)."""
    with torch.no_grad():
        ws = 1.0 + torch.exp(-entropy(logits_source))
        wt = 1.0 + torch.exp(-entropy(logits_target))
        return ws / ws.sum(), wt / wt.sum()


def mcd_discrepancy(logits1: Tensor, logits2: Tensor) -> Tensor:
    """MCD's classifier discrepancy (Saito et al., CVPR 2018, eq. 1), the mean absolute difference of
    the two classifiers' probabilities over the batch and the classes:

        d(p1, p2) = 1/(B K) sum_b sum_k |p1_bk - p2_bk|,    p_i = softmax(G_i(F(x))).

    The released code averages over the K classes too (``torch.mean(torch.abs(p1 - p2))``), i.e. the
    paper's per-sample L1 distance divided by K."""
    if logits1.shape != logits2.shape:
        raise ValueError(f"mcd_discrepancy: logits of shapes {tuple(logits1.shape)} and {tuple(logits2.shape)}")
    return (F.softmax(_at_least_fp32(logits1), dim=1) - F.softmax(_at_least_fp32(logits2), dim=1)).abs().mean()


def minent_loss(logits: Tensor, normalise: bool = False) -> Tensor:
    """Entropy minimisation (Grandvalet & Bengio 2004; tllib ``MinimumEntropy``): the mean entropy of
    the target predictions ``L_a = 1/B sum_b H(softmax(z_b))`` (:func:`entropy`; in nats, or divided
    by log K with ``normalise``)."""
    return entropy(logits, normalise=normalise).mean()
