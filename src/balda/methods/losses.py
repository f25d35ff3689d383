"""Loss functions shared by the strategies."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from balda.balancing.class_weights import logged_weights
from balda.core import dist
from balda.data.labels import IGNORE_INDEX
from balda.models.inference import resize_logits  # noqa: F401 - re-exported for the strategies


def masked_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``total / max(count, 1)``: a sum over selected pixels divided by their number.

    Inside a sharded data-parallel step the count is that of the *global* batch
    (:func:`balda.core.dist.global_mean`): every pixel-mean loss must use this so that DDP's
    gradient average equals the one-process gradient whatever the ranks' shares of valid pixels."""
    return dist.global_mean(total, count)


def weighted_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    class_weights: Optional[torch.Tensor] = None,
    pixel_weights: Optional[torch.Tensor] = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Pixel-wise cross-entropy with optional class and pixel weights.

    ``L = (1/|V|) * sum_{i in V} w_{y_i} * m_i * (-log softmax(z_i)_{y_i})`` where ``V`` is the set of
    non-ignored pixels, ``w`` the (detached) class weights and ``m`` the pixel weights (e.g. the
    pseudo-label confidence). The mean is over labelled pixels, not over the weights, so that class
    weights change the loss scale as in mmseg's ``avg_non_ignore`` reduction. Logits are upsampled to
    the label size first. Returns 0 (with a graph) when no pixel is labelled.

    Data parallelism: inside a sharded training step (:func:`balda.core.dist.sharded_step`) ``V``
    is the set of valid pixels of the *global* batch: the rank returns
    ``(W / |V_global|) * sum_{i in V_rank} ...`` (one all-reduce of the count), so DDP's average of
    the ranks' gradients is exactly the gradient of the one-process loss.
    """
    logits = resize_logits(logits, labels.shape[-2:])
    ce = F.cross_entropy(logits.float(), labels.long(), reduction="none", ignore_index=ignore_index)
    valid = labels != ignore_index
    if class_weights is not None:
        w = class_weights.detach().to(ce.dtype)
        ce = ce * w[labels.long().clamp(0, w.numel() - 1)]
    if pixel_weights is not None:
        ce = ce * pixel_weights.detach().to(ce.dtype)
    ce = ce * valid
    return masked_mean(ce.sum(), valid.sum())


def entropy_map(logits: torch.Tensor, normalise: bool = True) -> torch.Tensor:
    """Per-pixel entropy ``-sum_c p_c log p_c`` of softmax(logits) over dim 1, divided by log K if
    ``normalise`` (so it lies in [0, 1]). Computed with log_softmax, finite for any logits."""
    logp = F.log_softmax(logits.float(), dim=1)
    ent = -(logp.exp() * logp).sum(dim=1)
    if normalise:
        ent = ent / torch.log(torch.tensor(float(logits.shape[1]), device=logits.device))
    return ent


class WeightedCE(nn.Module):
    """The cross-entropy of one loss term with that term's class weighting: every CE of every strategy.

    ``forward(logits, labels, pixel_weights=None) -> (loss, logs)``: the logits are upsampled
    bilinearly to the label size; when the term has a class weighting (GBW, inverse frequency, ...,
    see :func:`balda.balancing.class_weights.build_weighting`) its weights are computed from the
    detached upsampled logits and the labels, ``w = weighting(z.detach(), y)``; then
    ``L = (1/|V|) sum_{i in V} w_{y_i} m_i CE_i`` (:func:`weighted_cross_entropy`, ``m`` the pixel
    weights). ``logs`` holds ``weights/<term>`` (the weights, NaN for classes absent from the labels,
    :func:`~balda.balancing.class_weights.logged_weights`) when there are weights.

    The weighting is a submodule, so its state (GBW's EMA) is checkpointed with the strategy.
    """

    def __init__(self, term: str, weighting: Optional[nn.Module] = None):
        super().__init__()
        self.term = term
        self.weighting = weighting

    def forward(
        self, logits: torch.Tensor, labels: torch.Tensor, pixel_weights: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if logits.dim() == 2:  # image classification: (B, K) logits and (B,) labels, as 1x1 maps
            logits, labels = logits[:, :, None, None], labels.reshape(-1, 1, 1)
            pixel_weights = None if pixel_weights is None else pixel_weights.reshape(-1, 1, 1)
        up = resize_logits(logits, labels.shape[-2:])
        w = self.weighting(up.detach(), labels) if self.weighting is not None else None
        loss = weighted_cross_entropy(up, labels, class_weights=w, pixel_weights=pixel_weights)
        return loss, ({f"weights/{self.term}": logged_weights(w, labels)} if w is not None else {})
