"""Segmentation datasets on disk: Cityscapes, GTA5 and SYNTHIA-RAND-CITYSCAPES (docs/datasets.md).

A dataset is an indexed list of (image file, label file) pairs, sorted by a stable name (the file
stem), whose :meth:`SegDataset.load` returns the RGB image (``uint8`` HxWx3) and the label already
mapped into the canonical 19-class trainId space (``uint8`` HxW, 255 = ignore), or ``None`` for an
unlabelled split. Resizing, cropping and augmentation belong to :mod:`balda.data.transforms`.

Scanning is done once, at construction; files are only decoded by ``load``. What is an error, in
every loader (``on_error='raise'``, the default; each :class:`~balda.data.io.DataError` names the file):

* an empty or missing folder;
* an image without its label in a labelled split (``on_error='skip'``: dropped at scan time with a
  warning listing them);
* an unreadable, truncated or corrupt image or label, a colour (multi-channel) label;
* a label holding an id its dataset does not define (Cityscapes/GTA5 labelIds other than 0..34 and
  255, trainIds other than 0..18 and 255, SYNTHIA ids above 22): never silently ignored;
* a label whose size differs from its image - except GTA5, whose real download has a few pairs of
  slightly different sizes: there the label is resized (nearest) to the image with a warning when the
  two aspect ratios agree within 2%, and anything else is an error.

With ``on_error='skip'`` a training loader (:meth:`SegDataset.load_or_skip`) and the evaluation log
such an item once and skip it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from balda.data.io import DataError, first_readable, read_image, read_label, read_synthia_label
from balda.data.labels import CITYSCAPES_LUT, CITYSCAPES_VALID_IDS, IGNORE_INDEX, NUM_CLASSES, invalid_ids, map_labels

log = logging.getLogger("balda.data")

#: Number of names shown in a warning about skipped files.
_SHOW = 5


def _fmt_names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_SHOW])
    return shown + (f", ... ({len(names) - _SHOW} more)" if len(names) > _SHOW else "")


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{what} folder not found: {path}", path)
    return path


class SegDataset:
    """Base class: sorted (image, label) file pairs with a stable name per item.

    Attributes: ``root`` (Path), ``split``, ``labelled``, ``names`` (sorted stems),
    ``image_paths`` and ``label_paths`` (lists of Paths; ``label_paths`` is None when unlabelled),
    ``on_error`` ('raise' or 'skip'; used by loaders to choose between :meth:`load` and
    :meth:`load_or_skip`).
    """

    kind: str = "base"
    #: Whether a label whose size differs from its image is resized (nearest) with a warning (True,
    #: when the aspect ratios agree within :attr:`aspect_tolerance`) or rejected with a DataError.
    resize_mismatched_labels: bool = False
    aspect_tolerance: float = 0.02

    def __init__(
        self,
        root,
        split: str,
        labelled: bool,
        names: list[str],
        image_paths: list[Path],
        label_paths: Optional[list[Path]],
        max_items: Optional[int] = None,
        on_error: str = "raise",
    ):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if max_items is not None and max_items < 1:
            raise ValueError(f"max_items must be >= 1 or None, got {max_items}")
        order = sorted(range(len(names)), key=lambda i: names[i])
        if max_items is not None:
            order = order[:max_items]
        self.root = Path(root)
        self.split = split
        self.labelled = bool(labelled)
        self.on_error = on_error
        self.names: list[str] = [names[i] for i in order]
        self.image_paths: list[Path] = [Path(image_paths[i]) for i in order]
        self.label_paths: Optional[list[Path]] = (
            [Path(label_paths[i]) for i in order] if labelled and label_paths is not None else None
        )
        if len(set(self.names)) != len(self.names):
            raise DataError(f"{self.kind} dataset {self.root}: duplicate item names")
        self._bad: set[int] = set()

    # ------------------------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, "
            f"labelled={self.labelled}, n={len(self)})"
        )

    def _check(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {self!r}")
        return int(i) % n

    def load_image(self, i: int) -> np.ndarray:
        """The RGB image of item ``i``, ``uint8`` (H, W, 3)."""
        return read_image(self.image_paths[self._check(i)])

    def _read_label_file(self, path: Path) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def load_label(self, i: int) -> Optional[np.ndarray]:
        """The trainId label of item ``i``, ``uint8`` (H, W), or None for an unlabelled split."""
        if self.label_paths is None:
            return None
        return self._read_label_file(self.label_paths[self._check(i)])

    def load(self, i: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """``(image uint8 HxWx3, label uint8 HxW trainIds or None)`` of item ``i``.

        Raises :class:`DataError` naming the file if it cannot be read. A label whose size differs
        from the image is resized (nearest) to it with a warning if ``resize_mismatched_labels``,
        otherwise it is an error.
        """
        i = self._check(i)
        image = self.load_image(i)
        label = self.load_label(i)
        if label is not None and label.shape != image.shape[:2]:
            lp, ip = self.label_paths[i], self.image_paths[i]
            msg = (
                f"label {lp} has size {label.shape[1]}x{label.shape[0]} but image {ip} has "
                f"{image.shape[1]}x{image.shape[0]}"
            )
            ratio = (label.shape[1] / label.shape[0]) / (image.shape[1] / image.shape[0])
            if not self.resize_mismatched_labels or abs(ratio - 1) > self.aspect_tolerance:
                raise DataError(
                    msg
                    + (
                        ""
                        if not self.resize_mismatched_labels
                        else f" (aspect ratios differ by {abs(ratio - 1):.0%}: not a resized pair)"
                    ),
                    lp,
                )
            log.warning("%s; resizing the label (nearest)", msg)
            label = cv2.resize(label, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
        return image, label

    def load_or_skip(self, i: int) -> tuple[int, np.ndarray, Optional[np.ndarray]]:
        """``(i_used, image, label)``: item ``i``, or, if it cannot be read, the next readable item.

        Each unreadable item is logged once (logger ``balda.data``) and remembered, so later calls
        skip it without touching the disk. Raises :class:`DataError` if no item is readable.
        """
        return first_readable(self, self.load, i)

    # ----------------------------------------------------------------------------- identity
    def fingerprint(self) -> str:
        """A hash of the kind, item names, file names and sizes (label files if labelled, else images).

        Independent of where the dataset lives, so a moved dataset keeps its caches.
        """
        paths = self.label_paths if self.label_paths is not None else self.image_paths
        sizes = []
        for p in paths:
            try:
                sizes.append(os.stat(p).st_size)
            except OSError:
                sizes.append(-1)
        files = [p.name for p in paths]
        payload = json.dumps([self.kind, self.labelled, self.names, files, sizes], separators=(",", ":"))
        return hashlib.sha1(payload.encode()).hexdigest()


# ---------------------------------------------------------------------------------- Cityscapes
class CityscapesDataset(SegDataset):
    """Cityscapes ``leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` with ``gtFine`` labels.

    The label of ``<stem>`` is ``gtFine/<split>/<city>/<stem>_gtFine_labelTrainIds.png`` when present
    (values must be 0..18 or 255), otherwise ``<stem>_gtFine_labelIds.png`` mapped through
    :data:`CITYSCAPES_LUT`. In a labelled split an image without either label raises
    :class:`DataError` naming the image (``on_error='skip'``: the image is dropped with a warning).
    Names are the stems ``<city>_<seq>_<frame>``.
    """

    kind = "cityscapes"
    IMG_SUFFIX = "_leftImg8bit.png"
    TRAINIDS_SUFFIX = "_gtFine_labelTrainIds.png"
    LABELIDS_SUFFIX = "_gtFine_labelIds.png"

    def __init__(
        self,
        root,
        split: str = "train",
        labelled: bool = True,
        max_items: Optional[int] = None,
        on_error: str = "raise",
    ):
        root = Path(root)
        img_dir = _require_dir(root / "leftImg8bit" / split, "Cityscapes image")
        images = sorted(img_dir.glob(f"*/*{self.IMG_SUFFIX}"))
        if not images:
            raise DataError(f"Cityscapes image folder {img_dir} holds no */*{self.IMG_SUFFIX} files", img_dir)
        names, image_paths, label_paths, missing = [], [], [], []
        for p in images:
            stem = p.name[: -len(self.IMG_SUFFIX)]
            lp = None
            if labelled:
                gt = root / "gtFine" / split / p.parent.name
                for suffix in (self.TRAINIDS_SUFFIX, self.LABELIDS_SUFFIX):
                    if (gt / f"{stem}{suffix}").is_file():
                        lp = gt / f"{stem}{suffix}"
                        break
                if lp is None:
                    expected = gt / f"{stem}{self.LABELIDS_SUFFIX}"
                    if on_error == "raise":
                        raise DataError(
                            f"Cityscapes image {p} has no label (expected {expected} or "
                            f"{self.TRAINIDS_SUFFIX}); use labelled=false for an unlabelled "
                            "split or on_error=skip to drop it",
                            p,
                        )
                    missing.append(stem)
                    continue
            names.append(stem)
            image_paths.append(p)
            label_paths.append(lp)
        if missing:
            log.warning(
                "Cityscapes %s: skipping %d image(s) without label: %s", split, len(missing), _fmt_names(missing)
            )
        if not names:
            raise DataError(f"Cityscapes split {img_dir}: no image has a label", img_dir)
        super().__init__(
            root, split, labelled, names, image_paths, label_paths if labelled else None, max_items, on_error
        )

    def _read_label_file(self, path: Path) -> np.ndarray:
        if path.name.endswith(self.TRAINIDS_SUFFIX):
            label = read_label(path)
            bad = (label >= NUM_CLASSES) & (label != IGNORE_INDEX)
            if bad.any():
                vals = np.unique(label[bad])[:10].tolist()
                raise DataError(f"labelTrainIds file {path} holds values {vals} outside 0..18 and 255", path)
            return label
        return _read_labelids(path)


def _read_labelids(path: Path) -> np.ndarray:
    """A Cityscapes/GTA5 labelIds file as trainIds; ids outside the Cityscapes label set are an error."""
    raw = read_label(path)
    bad = invalid_ids(raw, CITYSCAPES_VALID_IDS)
    if bad:
        raise DataError(
            f"label {path} holds ids {bad} that are not Cityscapes labelIds (0..34, 255); is it a "
            "trainId or colour map?",
            path,
        )
    return map_labels(raw, CITYSCAPES_LUT)


# --------------------------------------------------------------------------------------- GTA5
class GTA5Dataset(SegDataset):
    """GTA5 ``images/NNNNN.png`` + ``labels/NNNNN.png`` paired by filename.

    Labels are single-channel (palette) PNGs of Cityscapes labelIds, mapped through
    :data:`CITYSCAPES_LUT`. Missing ids are fine (pairs are matched by name); an image whose label is
    missing is an error (``on_error='skip'``: skipped with a warning); a label whose size differs from
    its image is resized (nearest) with a warning if the aspect ratios agree within 2% (the real
    download has such pairs), else an error. ``split`` is recorded but all pairs are used.
    """

    kind = "gta5"
    resize_mismatched_labels = True

    def __init__(
        self,
        root,
        split: str = "train",
        labelled: bool = True,
        max_items: Optional[int] = None,
        on_error: str = "raise",
    ):
        root = Path(root)
        names, image_paths, label_paths = _pair_by_stem(
            root / "images", root / "labels" if labelled else None, "GTA5", on_error
        )
        super().__init__(root, split, labelled, names, image_paths, label_paths, max_items, on_error)

    def _read_label_file(self, path: Path) -> np.ndarray:
        return _read_labelids(path)


# ------------------------------------------------------------------------------------ SYNTHIA
class SynthiaDataset(SegDataset):
    """SYNTHIA-RAND-CITYSCAPES ``RAND_CITYSCAPES/RGB/0000000.png`` + ``GT/LABELS/0000000.png``.

    ``root`` may be the folder holding ``RAND_CITYSCAPES`` or ``RAND_CITYSCAPES`` itself. Labels are
    16-bit 3-channel PNGs read with OpenCV (:func:`~balda.data.io.read_synthia_label`). Pairing and
    missing-label handling as for GTA5; ``split`` is recorded but all pairs are used.
    """

    kind = "synthia"

    def __init__(
        self,
        root,
        split: str = "train",
        labelled: bool = True,
        max_items: Optional[int] = None,
        on_error: str = "raise",
    ):
        root = Path(root)
        base = root / "RAND_CITYSCAPES" if (root / "RAND_CITYSCAPES").is_dir() else root
        names, image_paths, label_paths = _pair_by_stem(
            base / "RGB", base / "GT" / "LABELS" if labelled else None, "SYNTHIA", on_error
        )
        super().__init__(root, split, labelled, names, image_paths, label_paths, max_items, on_error)

    def _read_label_file(self, path: Path) -> np.ndarray:
        return read_synthia_label(path)


def _pair_by_stem(img_dir: Path, lbl_dir: Optional[Path], what: str, on_error: str = "raise"):
    """Pair ``img_dir/*.png`` with ``lbl_dir/<same name>``. An image without label is an error naming
    it; with ``on_error='skip'`` such images are dropped with a warning."""
    _require_dir(img_dir, f"{what} image")
    images = sorted(p for p in img_dir.glob("*.png") if not p.name.startswith("."))
    if not images:
        raise DataError(f"{what} image folder {img_dir} holds no .png files", img_dir)
    if lbl_dir is None:
        return [p.stem for p in images], images, None
    _require_dir(lbl_dir, f"{what} label")
    labels = {p.name: p for p in lbl_dir.glob("*.png")}
    if not labels:
        raise DataError(f"{what} label folder {lbl_dir} holds no .png files", lbl_dir)
    names, image_paths, label_paths, missing = [], [], [], []
    for p in images:
        lp = labels.get(p.name)
        if lp is None:
            if on_error == "raise":
                raise DataError(
                    f"{what} image {p} has no label {lbl_dir / p.name} (on_error=skip drops such "
                    "images with a warning)",
                    p,
                )
            missing.append(p.name)
            continue
        names.append(p.stem)
        image_paths.append(p)
        label_paths.append(lp)
    if missing:
        log.warning(
            "%s: skipping %d image(s) of %s without a label in %s: %s",
            what,
            len(missing),
            img_dir,
            lbl_dir,
            _fmt_names(missing),
        )
    if not names:
        raise DataError(f"{what}: no image in {img_dir} has a label in {lbl_dir}", lbl_dir)
    return names, image_paths, label_paths


# -------------------------------------------------------------------------------------- build
DATASETS: dict[str, Callable[..., SegDataset]] = {
    "cityscapes": CityscapesDataset,
    "gta5": GTA5Dataset,
    "synthia": SynthiaDataset,
}


def build_dataset(cfg, datasets: Optional[dict[str, Callable[..., SegDataset]]] = None) -> SegDataset:
    """Build the dataset described by a :class:`balda.config.DatasetConfig`, with the class that
    ``datasets`` (default :data:`DATASETS`) gives for its kind."""
    datasets = DATASETS if datasets is None else datasets
    if cfg.kind not in datasets:
        raise ValueError(f"unknown dataset kind {cfg.kind!r}; expected one of {sorted(datasets)}")
    if not cfg.root:
        raise DataError(f"{cfg.kind} dataset (split {cfg.split!r}): root is not set")
    return datasets[cfg.kind](
        cfg.root, split=cfg.split, labelled=cfg.labelled, max_items=cfg.max_items, on_error=cfg.on_error
    )


__all__ = ["SegDataset", "CityscapesDataset", "GTA5Dataset", "SynthiaDataset", "build_dataset", "DATASETS", "DataError"]
