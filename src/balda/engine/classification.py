"""Image classification as a second task of the one trainer (``task: classification``).

The GH paper (Huang et al. TPAMI 2024) measures gradient harmonization mainly on image-classification
UDA (DANN, CDAN(+E), MCD on Office-31/Office-Home/VisDA/DomainNet/Digits). This module registers
what the trainer needs for it - the classifier (:mod:`balda.models.classifier`), the image-list /
class-folder datasets (:mod:`balda.data.classification`), the step-deterministic loader (the
segmentation one, :class:`~balda.data.loaders.UDALoader`, with a classification view and collate)
and the evaluation: top-1 accuracy over the target test list, and the mean per-class accuracy
(VisDA-2017's figure) - and the ``balda generate digits`` command. Strategies, class weighting
(GBW on the per-image CE), combiners, checkpoints, logging and the CLI are the segmentation ones.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from balda.core.progress import progress_bar
from balda.core.registry import TaskSpec, register_command, register_task

__all__ = ["ClsMetrics", "evaluate_classifier", "classification_task"]


@dataclass
class ClsMetrics:
    """Accuracy read from a (K, K) confusion matrix (rows = ground truth); fractions in [0, 1].

    ``accuracy = trace(C) / sum(C)``; ``per_class[c] = C[c, c] / sum_j C[c, j]`` (NaN for a class
    absent from the ground truth); ``mean_class_accuracy`` = their nanmean (VisDA's figure)."""

    confusion: np.ndarray
    class_names: tuple[str, ...] = ()
    per_class: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        c = np.asarray(self.confusion, dtype=np.float64)
        self.confusion = c
        with np.errstate(invalid="ignore", divide="ignore"):
            self.per_class = np.diag(c) / c.sum(axis=1)
        if not self.class_names:
            self.class_names = tuple(str(i) for i in range(len(c)))

    @property
    def accuracy(self) -> float:
        total = self.confusion.sum()
        return float(np.trace(self.confusion) / total) if total else float("nan")

    @property
    def mean_class_accuracy(self) -> float:
        v = self.per_class[np.isfinite(self.per_class)]
        return float(v.mean()) if v.size else float("nan")

    # the task interface (balda.engine.tasks)
    @property
    def score(self) -> float:
        return self.accuracy

    def summary(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "mean_class_accuracy": self.mean_class_accuracy}

    def to_dict(self) -> dict:
        return {
            **self.summary(),
            "num_images": int(self.confusion.sum()),
            "per_class": {
                n: (None if not np.isfinite(a) else float(a)) for n, a in zip(self.class_names, self.per_class)
            },
            "confusion": self.confusion.astype(np.int64).tolist(),
        }

    def format_table(self) -> str:
        return (
            f"accuracy: {100 * self.accuracy:.2f}   mean per-class accuracy: {100 * self.mean_class_accuracy:.2f}"
            f"   ({int(self.confusion.sum())} images, {len(self.class_names)} classes)"
        )


# ------------------------------------------------------------------------------------ task builders
def _model(cfg):
    from balda.models.classifier import build_classifier

    m = cfg.model
    return build_classifier(
        m.backbone,
        m.num_classes,
        pretrained=m.pretrained,
        bottleneck_dim=m.bottleneck_dim,
        num_heads=m.num_heads,
        width=m.width,
        drop_path_rate=m.drop_path_rate,
    )


def _dataset(ds_cfg, cfg=None):
    """The image list or class-folder tree of ``ds_cfg``; with ``cfg``, its classes are
    ``model.num_classes`` (a list label outside them is an error naming the list file and line; a
    tree with another number of class folders an error naming the root)."""
    from balda.core.errors import ConfigError, DataError
    from balda.data.classification import ClassFolderDataset, ImageListDataset

    k = None if cfg is None else cfg.model.num_classes
    if ds_cfg.kind == "image_list":
        return ImageListDataset(ds_cfg.root, num_classes=k, on_error=ds_cfg.on_error, max_items=ds_cfg.max_items)
    if ds_cfg.kind == "image_folder":
        ds = ClassFolderDataset(ds_cfg.root, on_error=ds_cfg.on_error, max_items=ds_cfg.max_items)
        if k is not None and ds.num_classes != k:
            raise DataError(
                f"{ds_cfg.root} holds {ds.num_classes} class folders but model.num_classes={k}", ds_cfg.root
            )
        return ds
    raise ConfigError(
        f"'data.*.kind': {ds_cfg.kind!r} is a segmentation dataset; the classification task reads "
        "image_list or image_folder"
    )


def _transform(d, ds_cfg, train: bool):
    from balda.data.classification import ClsTransform

    return ClsTransform(resize=ds_cfg.resize, crop=d.crop, train=train, flip=d.flip if train else 0.0, jitter=d.jitter)


def _loader(cfg, start_step: int = 0, with_target_labels: bool = False, target_label_filter=None):
    """Source and target streams of :class:`~balda.data.loaders.UDALoader` (batches a function of
    ``(seed, step)``, so a resumed run sees the same images); the target labels are loaded but only
    strategies that declare ``uses_target_labels`` (the oracle) read them."""
    from balda.data.classification import ClsCollate, ClsView
    from balda.data.loaders import check_world_batch, uda_loader

    d = cfg.data
    check_world_batch(cfg)
    src = ClsView(_dataset(d.source, cfg), _transform(d, d.source, True))
    tgt = ClsView(_dataset(d.target, cfg), _transform(d, d.target, True))
    return uda_loader(cfg, src, tgt, start_step, collate=ClsCollate(d.mean, d.std))


def evaluate_classifier(model, dataset, cfg, device, progress: bool = True, export_dir=None) -> ClsMetrics:
    """Top-1 accuracy of ``model``'s first head over ``dataset`` (eval transform: resize, centre crop)."""
    from balda.data.classification import ClsCollate, ClsView

    view = ClsView(dataset, _transform(cfg.data, cfg.data.val, False), on_error=dataset.on_error)
    collate = ClsCollate(cfg.data.mean, cfg.data.std)
    n = len(view) if cfg.eval.max_images is None else min(len(view), int(cfg.eval.max_images))
    K = cfg.model.num_classes
    conf = torch.zeros(K, K, dtype=torch.long, device=device)
    bs = max(int(cfg.eval.batch_size), 32)
    was = model.training
    model.eval()
    try:
        with torch.inference_mode(), progress_bar("Evaluating", n, progress) as bar:
            for start in range(0, n, bs):
                batch = collate([view[i] for i in range(start, min(n, start + bs))])
                pred = model(batch["image"].to(device)).logits.argmax(1)
                y = batch["label"].to(device)
                conf += torch.bincount(y * K + pred, minlength=K * K).reshape(K, K)
                bar.advance(len(y))
    finally:
        model.train(was)
    metrics = ClsMetrics(conf.cpu().numpy(), tuple(getattr(dataset, "classes", ())[:K]))
    if export_dir is not None:
        Path(export_dir).mkdir(parents=True, exist_ok=True)
        (Path(export_dir) / "metrics.json").write_text(json.dumps(metrics.to_dict(), indent=1))
    return metrics


def _counts(dataset, cfg, progress: bool = False):
    return np.asarray(dataset.class_counts(), dtype=np.int64)[: cfg.model.num_classes]


classification_task = register_task(TaskSpec("classification", _model, _dataset, _loader, evaluate_classifier, _counts))


# ------------------------------------------------------------------------------------------ the CLI
def _cmd_generate_digits(args) -> int:
    from balda.data.digits import generate_digits

    s = generate_digits(Path(args.out), seed=args.seed, size=args.size)
    print(f"wrote the digits benchmark to {args.out}: {json.dumps(s.get('num_images', s.get('counts', {})))}")
    return 0


@register_command("generate digits")
def _generate_digits_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="balda generate digits",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Write the offline digits benchmark: scikit-learn's handwritten digits (source) and an "
        "MNIST-M-style shifted version (target: the digit blended over colour textures, another stroke, scale and "
        "noise), deterministic from --seed, as image lists (source/train.txt, target/train.txt, target/test.txt).",
    )
    p.help_line = "generate the offline digits benchmark (image classification)"
    p.add_argument("--out", default="data/digits", help="output folder")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the target rendering")
    from balda.data.digits import DEFAULT_SIZE

    p.add_argument("--size", type=int, default=DEFAULT_SIZE, help="image side in pixels")
    p.set_defaults(func=_cmd_generate_digits)
    return p
