"""Panoptic datasets: the segmentation datasets of :mod:`balda.data.datasets` with instance maps
(docs/panoptic.md).

:func:`build_panoptic_dataset` builds a split as :func:`~balda.data.datasets.build_dataset` does,
with a class that also reads instance ids:

* **Cityscapes** (:class:`PanopticCityscapesDataset`): ``gtFine/<split>/<city>/<stem>_gtFine_instanceIds.png``
  next to the label, read by :func:`~balda.data.panoptic.read_cityscapes_instance_ids`: a value
  ``>= 1000`` is one instance (the value is its id), a value ``< 1000`` is stuff or, on a thing
  class, a crowd region (instance 0).
* **SYNTHIA** (:class:`PanopticSynthiaDataset`): the instance channel (G) of the ``GT/LABELS`` PNG,
  read by :func:`~balda.data.panoptic.read_synthia_instance_ids` (instances numbered ``1..N``).
* **GTA5** has no instance labels: asking for one is a :class:`~balda.core.errors.ConfigError`.

An instance map is int32 (H, W): 0 = no instance (stuff, void, crowd), ``> 0`` = an instance id,
unique within the image. Errors are :class:`~balda.core.errors.DataError` naming the file: a missing
instanceIds file (found when the dataset is built: ``on_error='raise'`` raises there,
``on_error='skip'`` warns and skips the item), an instance map of another size than its label, an
instance id on a pixel whose label is not a thing class (stuff or void), and every error of the
readers. With ``on_error='skip'``, :meth:`~_PanopticMixin.load_panoptic_or_skip` skips unreadable
items as :meth:`~balda.data.datasets.SegDataset.load_or_skip` does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import numpy as np

from balda.core.errors import ConfigError, DataError
from balda.data.datasets import CityscapesDataset, SegDataset, SynthiaDataset, _fmt_names, build_dataset
from balda.data.io import first_readable
from balda.data.panoptic import THING_TRAINIDS, check_pair, read_cityscapes_instance_ids, read_synthia_instance_ids

log = logging.getLogger("balda.data")


class _PanopticMixin:
    """Instance access for a :class:`SegDataset` subclass (module docstring).

    ``instance_paths``: the file holding the instance ids of each item (None when unlabelled).
    Subclasses implement :meth:`_read_instances` and :meth:`_read_panoptic_labels`.
    """

    instance_paths: Optional[list[Path]]

    def _read_instances(self, i: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _read_panoptic_labels(self, i: int) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def load_instances(self, i: int) -> Optional[np.ndarray]:
        """The instance map of item ``i``, int32 (H, W) (0 = no instance), or None when unlabelled."""
        i = self._check(i)
        if self.instance_paths is None:
            return None
        return self._read_instances(i)

    def load_panoptic(self, i: int) -> tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]:
        """``(image uint8 HxWx3, semantic uint8 HxW trainIds, instances int32 HxW)`` of item ``i``
        (``(image, None, None)`` for an unlabelled split).

        Raises :class:`DataError` naming the file when the label or instance map is unreadable, when
        the label's size differs from the image's or the instance map's from the label's, and when an
        instance id lies on a pixel whose class is not a thing (:data:`THING_TRAINIDS`).
        """
        i = self._check(i)
        image = self.load_image(i)
        if self.label_paths is None:
            return image, None, None
        label, instances = self._read_panoptic_labels(i)
        if label.shape != image.shape[:2]:
            lp, ip = self.label_paths[i], self.image_paths[i]
            raise DataError(
                f"label {lp} has size {label.shape[1]}x{label.shape[0]} but image {ip} has "
                f"{image.shape[1]}x{image.shape[0]}",
                lp,
            )
        return image, label, instances

    def load_panoptic_or_skip(self, i: int):
        """``(i_used, image, semantic, instances)``: item ``i`` or, if it cannot be read, the next
        readable item; unreadable items are logged once and remembered (as in ``load_or_skip``).
        Raises :class:`DataError` if no item is readable."""
        return first_readable(self, self.load_panoptic, i)


class PanopticCityscapesDataset(_PanopticMixin, CityscapesDataset):
    """Cityscapes with ``<stem>_gtFine_instanceIds.png`` instance maps (module docstring).

    The semantic label is the one :class:`CityscapesDataset` reads (``labelTrainIds`` or
    ``labelIds``); the instance ids come from the instanceIds file in the same folder.
    """

    INSTANCE_SUFFIX = "_gtFine_instanceIds.png"

    def __init__(
        self,
        root,
        split: str = "train",
        labelled: bool = True,
        max_items: Optional[int] = None,
        on_error: str = "raise",
    ):
        super().__init__(root, split, labelled, max_items, on_error)
        self.instance_paths = None
        if self.label_paths is None:
            return
        self.instance_paths = [lp.parent / f"{n}{self.INSTANCE_SUFFIX}" for n, lp in zip(self.names, self.label_paths)]
        missing = [j for j, p in enumerate(self.instance_paths) if not p.is_file()]
        if not missing:
            return
        first = self.instance_paths[missing[0]]
        if on_error == "raise":
            raise DataError(
                f"Cityscapes instanceIds file not found: {first} (needed for the panoptic labels of "
                f"{self.label_paths[missing[0]]}; {len(missing)} of {len(self)} item(s) lack one; "
                "on_error=skip skips them)",
                first,
            )
        self._bad.update(missing)
        log.warning(
            "Cityscapes %s: skipping %d item(s) without %s: %s",
            split,
            len(missing),
            self.INSTANCE_SUFFIX,
            _fmt_names([self.names[j] for j in missing]),
        )

    def _read_instances(self, i: int) -> np.ndarray:
        return read_cityscapes_instance_ids(self.instance_paths[i])[1]

    def _read_panoptic_labels(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        label = self._read_label_file(self.label_paths[i])
        instances = self._read_instances(i)
        check_pair(self.label_paths[i], self.instance_paths[i], label, instances, things=THING_TRAINIDS)
        return label, instances


class PanopticSynthiaDataset(_PanopticMixin, SynthiaDataset):
    """SYNTHIA-RAND-CITYSCAPES whose ``GT/LABELS`` files also give the instance ids (G channel).

    :meth:`load_panoptic` decodes each label file once for both maps; the semantic map equals the
    one :meth:`SynthiaDataset.load` returns.
    """

    def __init__(
        self,
        root,
        split: str = "train",
        labelled: bool = True,
        max_items: Optional[int] = None,
        on_error: str = "raise",
    ):
        super().__init__(root, split, labelled, max_items, on_error)
        self.instance_paths = None if self.label_paths is None else list(self.label_paths)

    def _read_instances(self, i: int) -> np.ndarray:
        return read_synthia_instance_ids(self.instance_paths[i])[1]

    def _read_panoptic_labels(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        path = self.label_paths[i]
        label, instances = read_synthia_instance_ids(path)
        check_pair(path, path, label, instances, things=THING_TRAINIDS)
        return label, instances


#: Dataset classes with instance maps, by kind.
PANOPTIC_DATASETS: dict[str, Callable[..., SegDataset]] = {
    "cityscapes": PanopticCityscapesDataset,
    "synthia": PanopticSynthiaDataset,
}


def build_panoptic_dataset(ds_cfg) -> SegDataset:
    """The split of a :class:`balda.config.DatasetConfig` as a dataset with ``load_instances(i)``,
    ``load_panoptic(i)`` and ``load_panoptic_or_skip(i)`` (:class:`PanopticCityscapesDataset` or
    :class:`PanopticSynthiaDataset`). A GTA5 or classification kind raises
    :class:`~balda.core.errors.ConfigError`."""
    if ds_cfg.kind == "gta5":
        raise ConfigError(
            f"dataset kind 'gta5' (root {ds_cfg.root!r}) has no instance labels, so it cannot train or "
            "evaluate panoptic segmentation; use a SYNTHIA source (kind: synthia)"
        )
    if ds_cfg.kind not in PANOPTIC_DATASETS:
        raise ConfigError(
            f"dataset kind {ds_cfg.kind!r} has no panoptic labels; expected one of {sorted(PANOPTIC_DATASETS)}"
        )
    return build_dataset(ds_cfg, datasets=PANOPTIC_DATASETS)


__all__ = [
    "PanopticCityscapesDataset",
    "PanopticSynthiaDataset",
    "PANOPTIC_DATASETS",
    "build_panoptic_dataset",
]
