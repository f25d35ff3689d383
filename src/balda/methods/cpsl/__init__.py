"""CPSL, class-balanced pixel-level self-labeling (Li et al., CVPR 2022), as one package:

* :mod:`.clustering` - class-balanced Sinkhorn-Knopp, memory banks, the prototype head, SL and
  prototype-consistency losses;
* :mod:`.strategy` - stage 1 (``method.name=cpsl``): rectified pseudo-labels, RCE, the strategy;
* :mod:`.prepare` - ``balda cpsl prepare``: the warm-up model's soft pseudo-labels, prior and
  prototypes;
* :mod:`.distill` - stages 2-3 (``method.name=distill``): self-distillation into a fresh student.

Importing it registers the two strategies, the ``cpsl prepare`` command, the CPSL run plot and the
``cpsl`` bench entries.
"""

from __future__ import annotations

from balda.methods.augment import (
    box_masks,
    crop_theta,
    random_affine,
    random_boxes,
    warp_images,
    warp_labels,
    warp_maps,
)
from balda.methods.cpsl import prepare  # noqa: F401 - registers `balda cpsl prepare` and the bench entries
from balda.methods.cpsl.clustering import (
    MemoryBank,
    SelfLabelingHead,
    prototype_consistency,
    self_labeling_loss,
    sinkhorn_balanced,
)
from balda.methods.cpsl.distill import (
    DistillConfig,
    DistillLosses,
    DistillStrategy,
    distill_losses,
    flip_averaged_logits,
)
from balda.methods.cpsl.strategy import RCE_A, CPSLConfig, CPSLStrategy, SoftLabelStore, rce_loss, rectify

__all__ = [
    "sinkhorn_balanced",
    "MemoryBank",
    "SelfLabelingHead",
    "rectify",
    "rce_loss",
    "random_affine",
    "RCE_A",
    "crop_theta",
    "warp_images",
    "warp_labels",
    "warp_maps",
    "random_boxes",
    "box_masks",
    "self_labeling_loss",
    "prototype_consistency",
    "distill_losses",
    "DistillLosses",
    "DistillConfig",
    "DistillStrategy",
    "flip_averaged_logits",
    "SoftLabelStore",
    "CPSLConfig",
    "CPSLStrategy",
]
