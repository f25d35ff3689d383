"""The panoptic training loader: :class:`~balda.data.loaders.UDALoader` batches whose labelled
samples also carry the Panoptic-DeepLab targets (docs/panoptic.md).

A labelled sample is loaded with its instance map (:mod:`balda.data.panoptic_datasets`), augmented
by :class:`~balda.data.transforms.TrainTransform` (the instance map follows the label's geometry),
and only then turned into targets by :func:`~balda.data.panoptic.panoptic_targets`, so the centres,
offsets and instance areas are those of the crop the network sees. Batches are as deterministic as
those of :func:`~balda.data.loaders.build_train_loader`: a function of ``(seed, stream, step)``.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import torch

from balda.data.datasets import SegDataset, build_dataset
from balda.data.loaders import TrainView, UDALoader, build_rcs, check_world_batch, uda_loader
from balda.data.panoptic import panoptic_targets, thing_ids
from balda.data.panoptic_datasets import build_panoptic_dataset
from balda.data.transforms import TrainTransform

#: The target maps a labelled panoptic sample carries besides ``image`` and ``label``.
PANOPTIC_KEYS = ("center", "center_weight", "offset", "offset_weight", "semantic_weight", "instance")


class PanopticTrainView(TrainView):
    """A :class:`TrainView` over a panoptic dataset whose samples carry Panoptic-DeepLab targets.

    ``__getitem__(key)`` loads ``dataset.load_panoptic(index)`` (``load_panoptic_or_skip`` with
    ``on_error='skip'``), applies ``transform`` to image, label and instance map with
    ``default_rng(sample_seed)`` (the same draws as :class:`TrainView`), keeps the instance ids of
    the ``things`` classes only (0 elsewhere), and returns the keys of :class:`TrainView` (``image``
    (3, h, w), ``label`` (h, w) int64, ``index``, ``crop_box``, ``flip``) plus, from
    ``panoptic_targets(label, instance, sigma, small_area, small_weight, things, weight_small)``:
    ``center`` (h, w) float32, ``center_weight`` (h, w), ``offset`` (2, h, w) float32 (dy, dx),
    ``offset_weight`` (h, w), ``semantic_weight`` (h, w) and ``instance`` (h, w) int64.
    """

    def __init__(
        self,
        dataset: SegDataset,
        transform: TrainTransform,
        things,
        sigma: float = 8.0,
        small_area: int = 4096,
        small_weight: float = 3.0,
        weight_small: bool = True,
        on_error: str = "raise",
    ):
        if not hasattr(dataset, "load_panoptic"):
            raise TypeError(f"{dataset!r} has no instance labels (build it with build_panoptic_dataset)")
        if not dataset.labelled:
            raise ValueError(f"{dataset!r} is unlabelled: panoptic targets need labels (use a TrainView)")
        super().__init__(dataset, transform, on_error=on_error)
        self.things = tuple(int(c) for c in things)
        self.sigma, self.small_area, self.small_weight = float(sigma), int(small_area), float(small_weight)
        self.weight_small = bool(weight_small)
        self._thing_lut = torch.zeros(256, dtype=torch.bool)
        self._thing_lut[list(self.things)] = True

    def __getitem__(self, key) -> dict:
        index, seed, required, min_pixels = self.parse_key(key)
        if self.on_error == "skip":
            index, image, label, instances = self.dataset.load_panoptic_or_skip(index)
        else:
            image, label, instances = self.dataset.load_panoptic(index)
        img_t, lab_t, ins_t, geom = self.transform(
            image,
            label,
            np.random.default_rng(seed),
            required_class=None if required < 0 else required,
            min_class_pixels=min_pixels,
            return_geometry=True,
            instances=instances,
        )
        ins_t = torch.where(self._thing_lut[lab_t.clamp(0, 255)], ins_t, torch.zeros_like(ins_t))
        t = panoptic_targets(
            lab_t,
            ins_t,
            sigma=self.sigma,
            small_area=self.small_area,
            small_weight=self.small_weight,
            things=self.things,
            weight_small=self.weight_small,
        )
        sample = {"image": img_t, "label": lab_t, "index": torch.tensor(index, dtype=torch.long), **geom}
        sample.update({k: t[k] for k in PANOPTIC_KEYS if k != "instance"})
        sample["instance"] = ins_t
        return sample


def panoptic_things(cfg) -> tuple[int, ...]:
    """The thing trainIds of a run: those of the evaluation view ``cfg.eval.view`` (SYNTHIA-16 and
    -13: person, rider, car, bus, motorcycle, bicycle; 19: also truck and train) that the model
    predicts (``< cfg.model.num_classes``)."""
    return tuple(c for c in thing_ids(cfg.eval.view) if c < int(cfg.model.num_classes))


def build_panoptic_train_loader(cfg, start_step: int = 0, with_target_labels: bool = False) -> UDALoader:
    """The panoptic training loader of a :class:`balda.config.Config`.

    As :func:`~balda.data.loaders.build_train_loader` (same :class:`UDALoader`, step-deterministic
    seeds, rare class sampling on the source with ``cfg.data.rcs.enabled``), but the source and, when
    ``with_target_labels`` or ``cfg.data.target.labelled``, the target are panoptic datasets
    (:func:`build_panoptic_dataset`: Cityscapes or SYNTHIA, GTA5 is a ConfigError) read through
    :class:`PanopticTrainView`: their batches hold ``image`` (B, 3, h, w), ``label`` (B, h, w),
    ``index``, ``crop_box``, ``flip``, ``center`` (B, h, w), ``center_weight``, ``offset``
    (B, 2, h, w), ``offset_weight``, ``semantic_weight`` and ``instance`` (B, h, w) int64, with the
    targets of ``cfg.panoptic`` (sigma, small_area, small_weight, weight_small) and the things of
    :func:`panoptic_things`. An unlabelled target is read by a plain :class:`TrainView` (``image``,
    an all-255 ``label``, ``index``, ``crop_box``, ``flip``).
    """
    d = cfg.data
    check_world_batch(cfg)
    pc = cfg.panoptic
    things = panoptic_things(cfg)
    opts = dict(
        things=things,
        sigma=pc.sigma,
        small_area=pc.small_area,
        small_weight=pc.small_weight,
        weight_small=pc.weight_small,
    )
    if not d.source.labelled:
        from balda.core.errors import ConfigError

        raise ConfigError("'data.source.labelled' is false: the panoptic source must be read with its labels")
    scfg = d.source
    source = build_panoptic_dataset(scfg)
    target_labelled = bool(with_target_labels or d.target.labelled)
    tcfg = dataclasses.replace(d.target, labelled=target_labelled)
    rcs, min_crop = build_rcs(cfg, source)
    src_view = PanopticTrainView(source, TrainTransform.from_config(d, scfg), on_error=scfg.on_error, **opts)
    tgt_view: Optional[TrainView]
    if target_labelled:
        target = build_panoptic_dataset(tcfg)
        tgt_view = PanopticTrainView(target, TrainTransform.from_config(d, tcfg), on_error=tcfg.on_error, **opts)
    else:
        tgt_view = TrainView(build_dataset(tcfg), TrainTransform.from_config(d, tcfg), on_error=tcfg.on_error)
    return uda_loader(cfg, src_view, tgt_view, start_step, rcs, min_crop)


__all__ = ["PANOPTIC_KEYS", "PanopticTrainView", "panoptic_things", "build_panoptic_train_loader"]
