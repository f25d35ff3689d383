"""Tasks: what the one trainer needs to know about the prediction problem, and nothing more.

A task (registered in :data:`balda.core.registry.TASKS`, selected by ``cfg.task``) says how to
build the model, the datasets, the training loader and the evaluation of its problem; the trainer,
the strategies, class weighting, combiners, checkpoints, logging and the CLI are shared. Semantic
segmentation is the built-in task (here); image classification (:mod:`balda.engine.classification`)
and panoptic segmentation register their own in their modules.

An evaluation returns a metrics object with ``score`` (the number ``best.pt`` is chosen by: mIoU,
accuracy, mPQ), ``summary()`` (the scalars logged as ``eval/*``), ``to_dict()`` (the JSON written
to ``final_metrics.json``) and ``format_table()``.
"""

from __future__ import annotations

from balda.core.registry import TASKS, TaskSpec, register_task

__all__ = ["TaskSpec", "TASKS", "register_task", "segmentation_task"]


# ------------------------------------------------------------------------------------ segmentation
def _seg_model(cfg):
    from balda.models import build_model

    return build_model(cfg.model)


def _seg_dataset(ds_cfg, cfg=None):
    from balda.data.datasets import build_dataset

    return build_dataset(ds_cfg)


def _seg_loader(cfg, start_step: int = 0, **options):
    from balda.data.loaders import build_train_loader

    return build_train_loader(cfg, start_step=start_step, **options)


def _seg_evaluate(model, dataset, cfg, device, progress: bool = True, export_dir=None):
    from balda.engine.evaluation import evaluate

    return evaluate(
        model,
        dataset,
        cfg.eval,
        cfg.data.mean,
        cfg.data.std,
        device=device,
        export_dir=export_dir,
        progress=progress,
        num_classes=cfg.model.num_classes,
    )


def _seg_counts(dataset, cfg, progress: bool = False):
    from balda.data.stats import class_pixel_counts

    return class_pixel_counts(dataset, cfg.model.num_classes, progress=progress).sum(0)


segmentation_task = register_task(
    TaskSpec("segmentation", _seg_model, _seg_dataset, _seg_loader, _seg_evaluate, _seg_counts)
)
