"""Reading and writing images and label maps in the on-disk formats of docs/datasets.md.

* Images: any format PIL reads, returned as ``uint8`` HxWx3 RGB. The pixels are decoded eagerly so a
  truncated file fails here, with the file named, and not later inside a transform.
* Labels (Cityscapes ``labelIds`` / ``labelTrainIds``, GTA5): single-channel or palette PNGs whose
  *values* are the ids. They are read with ``np.asarray(Image.open(p))`` -- never ``convert('RGB')``,
  which would turn palette indices into colours.
* SYNTHIA labels: 16-bit, 3-channel PNGs whose class id is in the first (R) channel. PIL cannot read
  them faithfully; OpenCV returns BGR, so the class is channel index 2.

Every failure raises :class:`DataError` whose message names the offending file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Optional, Union

import cv2
import numpy as np
from PIL import Image

from balda.core.atomic import atomic_write
from balda.core.errors import DataError
from balda.data.labels import (
    IGNORE_INDEX,
    PALETTE,
    SYNTHIA_LUT,
    SYNTHIA_VALID_IDS,
    TRAINID_TO_LABELID,
    invalid_ids,
    map_labels,
)

PathLike = Union[str, os.PathLike]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

#: Label modes PIL returns for single-channel id maps.
_SINGLE_CHANNEL_MODES = {"1", "L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N"}


def _palette_bytes(colours: np.ndarray) -> list[int]:
    pal = np.zeros((256, 3), dtype=np.uint8)
    colours = np.asarray(colours, dtype=np.uint8).reshape(-1, 3)[:256]
    pal[: len(colours)] = colours
    return pal.reshape(-1).tolist()


#: Palette indexed by trainId (Cityscapes colours for 0..18, black elsewhere).
TRAINID_PALETTE: np.ndarray = np.zeros((256, 3), dtype=np.uint8)
TRAINID_PALETTE[: len(PALETTE)] = PALETTE
#: Palette indexed by Cityscapes labelId (the colour of its trainId), as in the GTA5 label PNGs.
LABELID_PALETTE: np.ndarray = np.zeros((256, 3), dtype=np.uint8)
LABELID_PALETTE[list(TRAINID_TO_LABELID)] = PALETTE


# -------------------------------------------------------------------------------------------- read
def _open_pil(path: PathLike, what: str) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file not found: {path}", path)
    try:
        img = Image.open(path)
        img.load()  # decode now: catches truncated files
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for broken files
        raise DataError(f"cannot read {what} {path}: {type(e).__name__}: {e}", path) from e
    return img


def read_image(path: PathLike) -> np.ndarray:
    """Read an image file as a ``uint8`` (H, W, 3) RGB array (grey/palette/RGBA converted to RGB)."""
    img = _open_pil(path, "image")
    try:
        return np.array(img.convert("RGB"), dtype=np.uint8)
    except Exception as e:  # pragma: no cover - conversion of a decoded image rarely fails
        raise DataError(f"cannot convert image {path} to RGB: {e}", path) from e


def read_label(path: PathLike, lut: Optional[np.ndarray] = None) -> np.ndarray:
    """Read a single-channel (grey or palette) label PNG as its raw values, ``uint8`` (H, W).

    The pixel values are the ids themselves (palette *indices*, not colours). With ``lut`` the ids are
    mapped through it (:func:`balda.data.labels.map_labels`; ids outside 0..255 become 255).
    A multi-channel (e.g. RGB colour) label raises :class:`DataError`, as do ids > 255 without a LUT.
    """
    img = _open_pil(path, "label")
    if img.mode not in _SINGLE_CHANNEL_MODES:
        raise DataError(
            f"label {path} has mode {img.mode!r} with {len(img.getbands())} channels; labels must be "
            "single-channel id maps (grey or palette PNG), not colour images such as *_color.png",
            path,
        )
    arr = np.array(img)
    if arr.ndim != 2:  # pragma: no cover - guarded by the mode check
        raise DataError(f"label {path} is not a 2-D array (shape {arr.shape})", path)
    if lut is not None:
        return map_labels(arr, lut)
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise DataError(f"label {path} holds ids outside 0..255 ({arr.min()}..{arr.max()}) and no LUT was given", path)
    return arr.astype(np.uint8)


def read_synthia_label(path: PathLike) -> np.ndarray:
    """Read a SYNTHIA ``GT/LABELS`` PNG and return trainIds, ``uint8`` (H, W).

    The file is a 16-bit 3-channel PNG whose class id is in the R channel; OpenCV
    (``IMREAD_UNCHANGED``) decodes it as BGR, so the class is channel 2. Ids are mapped through
    :data:`SYNTHIA_LUT`; ids above 255 map to 255 (never wrapped). A single-channel file is taken
    as the class map itself.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"SYNTHIA label file not found: {path}", path)
    try:
        buf = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise DataError(f"cannot read SYNTHIA label {path}: {e}", path) from e
    raw = buf.tobytes()
    if raw[:8] == _PNG_MAGIC and b"IEND" not in raw[-64:]:
        # OpenCV silently decodes a truncated PNG into a partly-zero array: check the IEND chunk.
        raise DataError(f"SYNTHIA label {path} is truncated (no PNG IEND chunk)", path)
    arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    if arr is None:
        raise DataError(f"cannot decode SYNTHIA label {path} (corrupt or not an image)", path)
    if arr.ndim == 3:
        if arr.shape[2] < 3:
            raise DataError(f"SYNTHIA label {path} has {arr.shape[2]} channels; expected 3 (BGR)", path)
        arr = arr[:, :, 2]
    bad = invalid_ids(arr, SYNTHIA_VALID_IDS)
    if bad:
        raise DataError(f"SYNTHIA label {path} holds class ids {bad} that SYNTHIA does not define (0..22)", path)
    return map_labels(arr, SYNTHIA_LUT)


# ------------------------------------------------------------------------------------------- write
def first_readable(dataset, load: Callable[[int], tuple], i: int) -> tuple:
    """``(j, *load(j))`` for the first ``j`` of ``i, i+1, ...`` (cyclically over ``len(dataset)``) whose
    ``load`` does not raise :class:`DataError`.

    Each unreadable item is logged once (logger ``balda.data``) and remembered in ``dataset._bad``, so
    later calls skip it without touching the disk. Raises :class:`DataError` if no item is readable.
    The one skip policy of every dataset kind (segmentation, panoptic, classification): it reads
    ``dataset._check``, ``dataset._bad``, ``dataset.names`` and ``dataset.root``.
    """
    n = len(dataset)
    i = dataset._check(i)
    for k in range(n):
        j = (i + k) % n
        if j in dataset._bad:
            continue
        try:
            loaded = load(j)
        except DataError as e:
            dataset._bad.add(j)
            logging.getLogger("balda.data").warning(
                "skipping unreadable item %d (%s) of %s: %s", j, dataset.names[j], dataset.root, e
            )
            continue
        return (j, *loaded)
    raise DataError(f"no readable item left in {dataset!r} (all {n} failed)", dataset.root)


def _atomic_save(img: Image.Image, path: PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"cannot write {path}: unknown image extension {path.suffix!r}", path)
    atomic_write(path, lambda f: img.save(f, format=fmt))


def write_image(path: PathLike, arr: np.ndarray) -> None:
    """Write a ``uint8`` (H, W, 3) RGB array (or (H, W) grey) to ``path`` (format from the extension)."""
    arr = np.asarray(arr)
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(f"write_image({path}): expected uint8 HxWx3 or HxW, got {arr.dtype} {arr.shape}")
    _atomic_save(Image.fromarray(np.ascontiguousarray(arr)), path)


def write_label(path: PathLike, arr: np.ndarray, palette: Union[bool, np.ndarray] = True) -> None:
    """Write a ``uint8`` (H, W) id map as a PNG whose pixel values are the ids.

    ``palette=True`` writes a palette-mode PNG (like the GTA5 labels) coloured with the trainId
    palette; an (N, 3) array gives another palette (e.g. :data:`LABELID_PALETTE`); ``False`` writes
    a greyscale PNG. Either way :func:`read_label` returns ``arr`` exactly.
    """
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise ValueError(f"write_label({path}): expected an (H, W) array, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(f"write_label({path}): values outside 0..255")
        arr = arr.astype(np.uint8)
    img = Image.fromarray(np.ascontiguousarray(arr))  # mode 'L'
    if palette is not False:
        colours = TRAINID_PALETTE if palette is True else np.asarray(palette)
        img.putpalette(_palette_bytes(colours))  # turns the 'L' image into 'P' with the same indices
    _atomic_save(img, path)


__all__ = [
    "first_readable",
    "DataError",
    "read_image",
    "read_label",
    "read_synthia_label",
    "write_image",
    "write_label",
    "TRAINID_PALETTE",
    "LABELID_PALETTE",
    "IGNORE_INDEX",
]
