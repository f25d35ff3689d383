"""Panoptic segmentation as a third task of the one trainer (``task: panoptic``; docs/panoptic.md).

What the trainer needs for EDAPS-style panoptic UDA (Saha et al., ICCV 2023): the model
(:class:`~balda.models.panoptic.PanopticSegmentor`, the configured segmentor plus centre and offset
heads), the datasets with instance ids and the training loader with Panoptic-DeepLab targets
(:mod:`balda.data.panoptic_datasets`), and the evaluation: per image, the semantic logits, centre
heatmap and offsets upsampled to the label size, Panoptic-DeepLab post-processing
(:func:`~balda.models.panoptic_post.panoptic_postprocess_from_config`), and PQ / SQ / RQ per class
over the dataset (:class:`~balda.engine.panoptic_metrics.PanopticEvaluator`, equal to the official
``cityscapesscripts`` evaluation on the exported files), plus the semantic mIoU of the same
predictions. Strategies (``panoptic_source_only``, ``panoptic_oracle``, ``panoptic_self_training``),
class weighting (GBW on every semantic CE), combiners, checkpoints, logging and the CLI are shared.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from balda.core.progress import progress_bar
from balda.core.registry import TaskSpec, register_task

__all__ = ["PanopticRunMetrics", "evaluate_panoptic", "panoptic_task"]


@dataclass
class PanopticRunMetrics:
    """The panoptic metrics of a run (``panoptic``: :class:`~balda.engine.panoptic_metrics.PanopticMetrics`)
    and the semantic metrics of the same predictions (``semantic``: :class:`~balda.engine.metrics.Metrics`).
    ``score`` is the mPQ; ``summary()`` adds ``miou`` to the panoptic scalars."""

    panoptic: object
    semantic: object

    @property
    def score(self) -> float:
        return self.panoptic.score

    @property
    def pq(self) -> np.ndarray:
        return self.panoptic.pq

    @property
    def confusion(self) -> np.ndarray:
        return self.semantic.confusion

    def summary(self) -> dict[str, float]:
        return {**self.panoptic.summary(), "miou": self.semantic.miou}

    def to_dict(self) -> dict:
        return {**self.panoptic.to_dict(), "miou": self.semantic.miou, "semantic": self.semantic.to_dict()}

    def format_table(self) -> str:
        return f"{self.panoptic.format_table()}\n\nsemantic mIoU: {100 * self.semantic.miou:.2f}"


# ------------------------------------------------------------------------------------------ builders
def _model(cfg):
    from balda.models import build_model
    from balda.models.panoptic import PanopticSegmentor

    return PanopticSegmentor(build_model(cfg.model), head_channels=cfg.panoptic.head_channels)


def _dataset(ds_cfg, cfg=None):
    from balda.data.panoptic_datasets import build_panoptic_dataset

    return build_panoptic_dataset(ds_cfg)


def _loader(cfg, start_step: int = 0, **options):
    from balda.data.panoptic_loader import build_panoptic_train_loader

    return build_panoptic_train_loader(cfg, start_step=start_step, **options)


def evaluate_panoptic(model, dataset, cfg, device, progress: bool = True, export_dir=None) -> PanopticRunMetrics:
    """mPQ (and mIoU) of ``model`` over ``dataset`` (whole images, at ``eval.size`` when set, one at a
    time): see the module docstring. With ``export_dir``: the COCO-panoptic files of the official evaluation
    (:class:`~balda.engine.panoptic_export.CocoPanopticExport`) and ``metrics.json``. Unreadable
    items raise naming the file, or are skipped (and counted) with ``on_error=skip``."""
    from balda.core.errors import DataError
    from balda.data.labels import get_view
    from balda.data.panoptic import encode_panoptic, thing_ids
    from balda.engine.metrics import Metrics, confusion_matrix
    from balda.engine.panoptic_export import CocoPanopticExport
    from balda.engine.panoptic_metrics import PanopticEvaluator
    from balda.methods.losses import resize_logits
    from balda.methods.panoptic import upsample_instance
    from balda.models.inference import normalize_images
    from balda.models.panoptic_post import panoptic_postprocess_from_config

    if cfg.eval.mode != "whole":
        from balda.core.errors import ConfigError

        raise ConfigError("'eval.mode': the panoptic evaluation infers whole images (eval.size to resize them)")
    device = torch.device(device)
    k = cfg.model.num_classes
    things = tuple(thing_ids(cfg.eval.view))
    post = panoptic_postprocess_from_config(cfg)
    evaluator = PanopticEvaluator(cfg.eval.view, things=things, num_classes=k)
    conf = torch.zeros((k, k), dtype=torch.long, device=device)
    export = CocoPanopticExport(export_dir, cfg.eval.view, things) if export_dir is not None else None
    n = len(dataset) if cfg.eval.max_images is None else min(len(dataset), int(cfg.eval.max_images))
    skip = getattr(dataset, "on_error", "raise") == "skip"
    skipped = 0
    was = model.training
    model.eval()
    try:
        with torch.inference_mode(), progress_bar("Evaluating", n, progress) as bar:
            for i in range(n):
                try:
                    image, sem, ins = dataset.load_panoptic(i)
                except DataError:
                    if not skip:
                        raise
                    skipped += 1
                    bar.advance(1)
                    continue
                x = normalize_images([image], cfg.data.mean, cfg.data.std, device)
                size = tuple(sem.shape[-2:])
                if cfg.eval.size:  # infer at eval.size; offsets are in its pixels: rescale them
                    x = torch.nn.functional.interpolate(x, size=tuple(cfg.eval.size), mode="bilinear")
                out = model(x)
                logits = resize_logits(out.logits.float(), size)
                center, offset = upsample_instance(out, size)
                if tuple(x.shape[-2:]) != size:
                    scale = torch.tensor([size[0] / x.shape[-2], size[1] / x.shape[-1]], device=device)
                    offset = offset * scale.view(1, 2, 1, 1)
                pred_sem = logits.argmax(1)
                pan, _ = post(pred_sem, center, offset)
                y = torch.as_tensor(np.asarray(sem), device=device).long()[None]
                conf += confusion_matrix(pred_sem, y, k)
                gt = encode_panoptic(sem, ins, things, k)
                pred = pan[0].cpu().numpy()
                evaluator.add(pred, gt)
                if export is not None:
                    export.add(str(dataset.names[i]), pred, gt)
                bar.advance(1)
    finally:
        model.train(was)
    metrics = PanopticRunMetrics(
        evaluator.metrics(),
        Metrics.from_confusion(conf.cpu().numpy(), get_view(cfg.eval.view), rare_k=int(getattr(cfg.eval, "rare_k", 6))),
    )
    if export is not None:
        export.write()
        d = metrics.to_dict()
        d["num_images"], d["skipped_images"] = n - skipped, skipped
        (Path(export_dir) / "metrics.json").write_text(json.dumps(d, indent=1))
    return metrics


def _counts(dataset, cfg, progress: bool = False):
    from balda.data.stats import class_pixel_counts

    return class_pixel_counts(dataset, cfg.model.num_classes, progress=progress).sum(0)


panoptic_task = register_task(TaskSpec("panoptic", _model, _dataset, _loader, evaluate_panoptic, _counts))
