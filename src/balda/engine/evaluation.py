"""Evaluation of a segmentor on a labelled split: inference, the dataset-level confusion matrix, the
metrics and (optionally) the exported predictions.

Protocol (README "Evaluation"): one confusion matrix is accumulated over the whole split, ignore
pixels (255) skipped; logits are upsampled bilinearly to the full label resolution
(:mod:`balda.models.inference`, ``whole`` or ``slide`` inference); the metrics are read from the
matrix (:class:`~balda.engine.metrics.Metrics`: IoU, recall, precision per class, mIoU and min-class
IoU over the chosen view, pixel accuracy). Predictions can be exported as Cityscapes labelIds PNGs
(:mod:`balda.engine.export`) that the official evaluation scores identically.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from balda.core.errors import DataError
from balda.core.progress import progress_bar
from balda.data.labels import NUM_CLASSES, get_view
from balda.engine.export import cityscapes_official_eval, export_prediction
from balda.engine.metrics import Metrics, confusion_matrix
from balda.models.inference import normalize_images, predict_logits, predict_slide, predict_whole, slide_windows

__all__ = [
    "confusion_matrix",
    "Metrics",
    "predict_whole",
    "predict_slide",
    "slide_windows",
    "evaluate",
    "export_prediction",
    "cityscapes_official_eval",
]


log = logging.getLogger("balda.eval")


def _batches(n: int, batch_size: int, load, skip_errors: bool = False, skipped: Optional[list] = None) -> Any:
    """Yield lists of (index, image, label) of at most ``batch_size`` items with equal image and
    label shapes (a shape change flushes the batch). With ``skip_errors`` an unreadable item is
    logged, appended to ``skipped`` and left out instead of raising."""
    batch: list = []
    for i in range(n):
        try:
            image, label = load(i)
        except DataError as e:
            if not skip_errors:
                raise
            log.warning("evaluation: skipping unreadable item %d: %s", i, e)
            if skipped is not None:
                skipped.append(i)
            continue
        if batch and (batch[0][1].shape != image.shape or batch[0][2].shape != label.shape):
            yield batch
            batch = []
        batch.append((i, image, label))
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def evaluate(
    model: nn.Module,
    dataset: Any,
    eval_cfg: Any,
    mean: Sequence[float],
    std: Sequence[float],
    device: str | torch.device = "cpu",
    export_dir: Optional[str | Path] = None,
    progress: bool = True,
    num_classes: int = NUM_CLASSES,
) -> Metrics:
    """Evaluate ``model`` on ``dataset`` and return :class:`Metrics` over ``eval_cfg.view``.

    ``dataset``: ``len(dataset)``, ``dataset.load(i) -> (uint8 HxWx3 RGB image, uint8 HxW trainIds)``
    and ``dataset.names[i]`` (a stem). Images are normalised with ``mean``/``std`` (0-255 units),
    predicted with ``eval_cfg.mode`` (``whole`` at ``eval_cfg.size``, or ``slide`` with
    ``eval_cfg.crop``/``eval_cfg.stride``, after resizing to ``eval_cfg.size`` if set), upsampled to
    the label's full resolution, and one confusion matrix is accumulated on ``device``.
    ``eval_cfg.max_images`` limits the number of images. An unreadable image or label raises
    :class:`DataError` naming the file, unless the split has ``on_error='skip'``: then it is logged
    and left out of the confusion matrix (``metrics.json`` of an export records the skipped count).
    The model runs in eval mode under ``torch.inference_mode`` and its previous train/eval mode is restored afterwards.

    With ``export_dir``: predictions are written by :func:`export_prediction` and the metrics to
    ``<export_dir>/metrics.json``.
    """
    device = torch.device(device)
    view = get_view(eval_cfg.view)
    n = len(dataset)
    if eval_cfg.max_images is not None:
        n = min(n, int(eval_cfg.max_images))
    conf = torch.zeros((num_classes, num_classes), dtype=torch.long, device=device)
    batch_size = max(int(getattr(eval_cfg, "batch_size", 1) or 1), 1)

    was_training = model.training
    model.eval()
    try:
        skipped: list[int] = []
        skip = getattr(dataset, "on_error", "raise") == "skip"
        with torch.inference_mode(), progress_bar("Evaluating", n, progress) as bar:
            for batch in _batches(n, batch_size, dataset.load, skip, skipped):
                x = normalize_images([b[1] for b in batch], mean, std, device)
                y = torch.from_numpy(np.stack([np.asarray(b[2]) for b in batch])).to(device).long()
                logits = predict_logits(
                    model,
                    x,
                    tuple(y.shape[-2:]),
                    eval_cfg.mode,
                    size=eval_cfg.size,
                    crop=eval_cfg.crop,
                    stride=eval_cfg.stride,
                    num_classes=num_classes,
                )
                pred = logits.argmax(dim=1)
                conf += confusion_matrix(pred, y, num_classes)
                if export_dir is not None:
                    pred_np = pred.to(torch.uint8).cpu().numpy()
                    for (i, _, _), p in zip(batch, pred_np):
                        export_prediction(p, str(dataset.names[i]), export_dir)
                bar.advance(len(batch))
    finally:
        model.train(was_training)

    metrics = Metrics.from_confusion(conf.cpu().numpy(), view, rare_k=int(getattr(eval_cfg, "rare_k", 6)))
    if export_dir is not None:
        out = Path(export_dir)
        out.mkdir(parents=True, exist_ok=True)
        d = metrics.to_dict()
        d["num_images"] = n - len(skipped)
        d["skipped_images"] = len(skipped)
        (out / "metrics.json").write_text(json.dumps(d, indent=2))
    return metrics
