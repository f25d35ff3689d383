"""Panoptic labels: thing classes, instance-id readers, the panoptic id encoding, and the
Panoptic-DeepLab training targets (Cheng et al., "Panoptic-DeepLab", CVPR 2020) used by EDAPS
(Saha et al., ICCV 2023). See docs/panoptic.md.

* Things (trainIds): person 11, rider 12, car 13, truck 14, bus 15, train 16, motorcycle 17,
  bicycle 18; in the SYNTHIA-16 view truck and train are absent (:func:`thing_ids`).
* Cityscapes ``*_gtFine_instanceIds.png``: a 16-bit greyscale PNG (PIL mode 'I' or 'I;16'); ``id < 1000`` is the
  labelId of a stuff region or of a crowd ("group") region of a thing class, ``id >= 1000`` is
  ``labelId * 1000 + index`` of one instance (index from 0).
* SYNTHIA ``GT/LABELS``: 16-bit 3-channel PNGs; the class is the first (R) channel and, per the
  dataset's README ("The first channel contains the class of that pixel ... The second channel
  contains the unique ID of the instance for those objects that are dynamic"), the instance id is
  the second (G) channel. OpenCV decodes BGR, so class = index 2 and instance = index 1 (G is index
  1 in both orders). EDAPS' SYNTHIA panoptic conversion reads the same two channels (R, G).
* Panoptic ids (one int64 map, used by the post-processing, the metrics and the export):
  ``id = trainId * LABEL_DIVISOR + k`` with ``LABEL_DIVISOR = 1000``; ``k >= 1`` numbers the
  instances of a thing class, ``k = 0`` is a stuff segment or, for a thing class, a crowd region;
  ``VOID_ID = -1`` is void (unlabelled, ignored classes).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import cv2
import numpy as np
import torch

from balda.core.errors import DataError
from balda.data.io import _open_pil
from balda.data.labels import (
    CITYSCAPES_LUT,
    CITYSCAPES_VALID_IDS,
    IGNORE_INDEX,
    NUM_CLASSES,
    SYNTHIA_LUT,
    SYNTHIA_VALID_IDS,
    ClassView,
    get_view,
    invalid_ids,
)

PathLike = Union[str, os.PathLike]

__all__ = [
    "THING_TRAINIDS",
    "SYNTHIA_THING_TRAINIDS",
    "CITYSCAPES_INSTANCE_LABELIDS",
    "LABEL_DIVISOR",
    "VOID_ID",
    "thing_ids",
    "stuff_ids",
    "read_cityscapes_instance_ids",
    "read_synthia_instance_ids",
    "check_pair",
    "encode_panoptic",
    "panoptic_targets",
]

#: Thing classes in the canonical trainId space.
THING_TRAINIDS: tuple[int, ...] = (11, 12, 13, 14, 15, 16, 17, 18)
#: Thing classes of the SYNTHIA-16 view (truck 14 and train 16 have no SYNTHIA labels).
SYNTHIA_THING_TRAINIDS: tuple[int, ...] = (11, 12, 13, 15, 17, 18)
#: Cityscapes labelIds whose label ``hasInstances`` (person .. bicycle, incl. caravan 29 and trailer
#: 30, which are void in the trainId space): the only labelIds an id >= 1000 may carry.
CITYSCAPES_INSTANCE_LABELIDS: frozenset[int] = frozenset(range(24, 34))
LABEL_DIVISOR = 1000
VOID_ID = -1

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_SINGLE_CHANNEL_MODES = {"1", "L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N"}


def thing_ids(view: ClassView | str | int = "19") -> tuple[int, ...]:
    """The thing trainIds of an evaluation view: ``THING_TRAINIDS`` that lie in ``view``.

    ``thing_ids("16") == SYNTHIA_THING_TRAINIDS``; ``thing_ids("19") == THING_TRAINIDS``.
    """
    v = get_view(view) if isinstance(view, (str, int)) else view
    return tuple(c for c in v.class_ids if c in THING_TRAINIDS)


def stuff_ids(view: ClassView | str | int = "19") -> tuple[int, ...]:
    """The stuff trainIds of an evaluation view (its classes that are not things)."""
    v = get_view(view) if isinstance(view, (str, int)) else view
    return tuple(c for c in v.class_ids if c not in THING_TRAINIDS)


def _thing_lut(things) -> np.ndarray:
    lut = np.zeros(256, dtype=bool)
    lut[list(things)] = True
    return lut


# ------------------------------------------------------------------------------------- readers
def read_cityscapes_instance_ids(
    path: PathLike, expected_shape: Optional[tuple[int, int]] = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read a Cityscapes ``*_gtFine_instanceIds.png`` as ``(semantic, instance)``.

    For raw value ``v``: ``labelId = v`` if ``v < 1000`` else ``v // 1000``;
    ``semantic = CITYSCAPES_LUT[labelId]`` (uint8 trainIds, 255 void) and ``instance = v`` (int32)
    where ``v >= 1000`` and the label is a train class, else 0 (stuff, crowd regions, and the
    instances of the void classes caravan/trailer). Instance ids are therefore unique and positive.

    Raises :class:`DataError` naming the file for: a missing/unreadable or multi-channel file, a
    value ``< 1000`` outside the Cityscapes labelIds (0..34, 255), an instance value ``>= 1000``
    whose labelId has no instances (a stuff class or no label at all), and a size other than
    ``expected_shape`` (H, W) when given.
    """
    img = _open_pil(path, "Cityscapes instanceIds")
    if img.mode not in _SINGLE_CHANNEL_MODES:
        raise DataError(
            f"Cityscapes instanceIds {path} has mode {img.mode!r} with {len(img.getbands())} channels; "
            "expected a single-channel 16/32-bit id map",
            path,
        )
    raw = np.asarray(img).astype(np.int64)
    _check_shape(path, raw.shape, expected_shape)
    is_inst = raw >= 1000
    label_ids = np.where(is_inst, raw // 1000, raw)
    bad_small = invalid_ids(np.where(is_inst, 0, raw), CITYSCAPES_VALID_IDS)
    if bad_small:
        raise DataError(
            f"Cityscapes instanceIds {path} holds ids {bad_small} that are not Cityscapes labelIds (0..34, 255)",
            path,
        )
    inst_lut = np.zeros(max(int(label_ids.max(initial=0)), 255) + 1, dtype=bool)
    inst_lut[list(CITYSCAPES_INSTANCE_LABELIDS)] = True
    bad = is_inst & ~inst_lut[label_ids]
    if bad.any():
        vals = np.unique(raw[bad])[:10].tolist()
        raise DataError(
            f"Cityscapes instanceIds {path} holds instance ids {vals} whose labelId (id // 1000) is not a "
            f"class with instances (Cityscapes labelIds {min(CITYSCAPES_INSTANCE_LABELIDS)}.."
            f"{max(CITYSCAPES_INSTANCE_LABELIDS)})",
            path,
        )
    semantic = CITYSCAPES_LUT[np.clip(label_ids, 0, 255)].astype(np.uint8)
    instance = np.where(is_inst & (semantic != IGNORE_INDEX), raw, 0).astype(np.int32)
    return semantic, instance


def _decode_16bit_png(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{what} file not found: {path}", path)
    try:
        buf = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise DataError(f"cannot read {what} {path}: {e}", path) from e
    raw = buf.tobytes()
    if raw[:8] == _PNG_MAGIC and b"IEND" not in raw[-64:]:  # OpenCV decodes a truncated PNG silently
        raise DataError(f"{what} {path} is truncated (no PNG IEND chunk)", path)
    arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    if arr is None:
        raise DataError(f"cannot decode {what} {path} (corrupt or not an image)", path)
    return arr


def read_synthia_instance_ids(
    path: PathLike,
    instance_channel: int = 1,
    class_channel: int = 2,
    expected_shape: Optional[tuple[int, int]] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read a SYNTHIA-RAND-CITYSCAPES ``GT/LABELS`` PNG as ``(semantic, instance)``.

    Channels are indices of the OpenCV (BGR) array: ``class_channel = 2`` (R) and
    ``instance_channel = 1`` (G), per the SYNTHIA README (module docstring). ``semantic =
    SYNTHIA_LUT[class]`` (uint8 trainIds). Instances are the distinct ``(class, G)`` pairs with
    ``G > 0`` on thing pixels, numbered ``1..N`` in ``(class, G)`` order (int32); ``G = 0`` on a
    thing pixel means "no instance id" and is returned as 0 (treated like a crowd region).

    Raises :class:`DataError` naming the file for a missing/corrupt/truncated file, a file with
    fewer than 3 channels (no instance channel), class ids outside SYNTHIA's 0..22, or a size other
    than ``expected_shape``.
    """
    path = Path(path)
    arr = _decode_16bit_png(path, "SYNTHIA label")
    if arr.ndim != 3 or arr.shape[2] < 3:
        shape = arr.shape if arr.ndim == 3 else arr.shape + (1,)
        raise DataError(
            f"SYNTHIA label {path} has {shape[2]} channel(s); expected 3 (BGR: class in R, instance id in G)",
            path,
        )
    _check_shape(path, arr.shape[:2], expected_shape)
    cls = arr[:, :, class_channel].astype(np.int64)
    ins = arr[:, :, instance_channel].astype(np.int64)
    bad = invalid_ids(cls, SYNTHIA_VALID_IDS)
    if bad:
        raise DataError(f"SYNTHIA label {path} holds class ids {bad} that SYNTHIA does not define (0..22)", path)
    semantic = SYNTHIA_LUT[cls].astype(np.uint8)
    fg = _thing_lut(THING_TRAINIDS)[semantic] & (ins > 0)
    instance = np.zeros(cls.shape, dtype=np.int32)
    if fg.any():
        _, inv = np.unique(cls[fg] * 65536 + ins[fg], return_inverse=True)
        instance[fg] = inv.reshape(-1) + 1
    return semantic, instance


def _check_shape(path, shape, expected) -> None:
    if expected is not None and tuple(shape[:2]) != tuple(expected):
        raise DataError(
            f"instance map {path} has size {shape[1]}x{shape[0]} but {expected[1]}x{expected[0]} was expected",
            path,
        )


def check_pair(sem_path: PathLike, inst_path: PathLike, sem: np.ndarray, inst: np.ndarray, things=None) -> None:
    """Raise :class:`DataError` (naming both files; ``path`` = the instance file) if the semantic
    map ``sem`` read from ``sem_path`` and the instance map ``inst`` from ``inst_path`` differ in size,
    or, when ``things`` (trainIds) is given, if a pixel has an instance id (``inst > 0``) but a class
    of ``sem`` outside ``things`` (a stuff class or void)."""
    s, i = np.shape(sem)[:2], np.shape(inst)[:2]
    if s != i:
        raise DataError(
            f"instance map {inst_path} has size {i[1]}x{i[0]} but semantic label {sem_path} has {s[1]}x{s[0]}",
            inst_path,
        )
    if things is None:
        return
    sem = np.asarray(sem)
    bad = (np.asarray(inst) > 0) & ~_thing_lut(things)[np.clip(sem, 0, 255).astype(np.int64)]
    if bad.any():
        classes = np.unique(sem[bad])[:10].tolist()
        raise DataError(
            f"instance map {inst_path} has instance ids on {int(bad.sum())} pixel(s) whose class in "
            f"semantic label {sem_path} is not a thing (trainIds {classes}; things are {sorted(things)})",
            inst_path,
        )


# ------------------------------------------------------------------------------------ encoding
def encode_panoptic(
    semantic, instance, things=THING_TRAINIDS, num_classes: int = NUM_CLASSES, divisor: int = LABEL_DIVISOR
) -> np.ndarray:
    """Panoptic ids ``trainId * divisor + k`` (int64 (H, W)) from a trainId map and an instance map.

    ``k = 0`` for stuff pixels and for thing pixels with instance 0 (crowd); thing instances get
    ``k = 1, 2, ...`` within their class, in increasing instance-id order. Pixels whose class is
    not in ``0..num_classes-1`` (255) are :data:`VOID_ID`. Raises ValueError if the maps differ in
    shape or a class has ``>= divisor`` instances.
    """
    sem = _np(semantic).astype(np.int64)
    ins = _np(instance).astype(np.int64)
    if sem.shape != ins.shape:
        raise ValueError(f"semantic {sem.shape} and instance {ins.shape} maps differ in shape")
    valid = (sem >= 0) & (sem < num_classes)
    out = np.where(valid, sem * divisor, VOID_ID).astype(np.int64)
    fg = valid & _thing_lut(things)[np.clip(sem, 0, 255)] & (ins > 0)
    if fg.any():
        key = sem[fg] * (1 << 32) + ins[fg]
        uniq, inv = np.unique(key, return_inverse=True)
        cls = uniq >> 32
        first = np.searchsorted(cls, cls, side="left")
        k = np.arange(len(uniq)) - first + 1
        if k.max() >= divisor:
            raise ValueError(f"a class has {k.max()} instances; at most {divisor - 1} fit the panoptic encoding")
        out[fg] = cls[inv.reshape(-1)] * divisor + k[inv.reshape(-1)]
    return out


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


# ------------------------------------------------------------------------------------- targets
def _gaussian_kernel(sigma: float, radius: int, device) -> torch.Tensor:
    d = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    return torch.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2.0 * sigma**2))


def panoptic_targets(
    semantic,
    instance,
    sigma: float = 8.0,
    small_area: int = 4096,
    small_weight: float = 3.0,
    things=THING_TRAINIDS,
    weight_small: bool = True,
    ignore_index: int = IGNORE_INDEX,
) -> dict:
    """Panoptic-DeepLab targets (Cheng et al., CVPR 2020, Sec. 3.2) for one image.

    Inputs: ``semantic`` (H, W) trainIds and ``instance`` (H, W) ids (> 0 for a thing instance, 0
    for stuff / crowd), numpy or torch (outputs follow: numpy in -> numpy out, torch in -> torch on
    the same device). A *thing pixel* has a class in ``things`` and instance > 0; instance ``i``
    has pixels ``P_i``, area ``A_i = |P_i|`` and centre of mass ``c_i = (1/A_i) sum_{p in P_i} p``.

    * ``center`` (H, W) float32: ``max_i exp(-||p - round(c_i)||^2 / (2 sigma^2))``; the Gaussian
      is centred on the rounded centre (half up), so its peak is exactly 1 there, and is evaluated
      on a window of radius ``ceil(3 sigma) + 1`` (0 outside, as in the reference implementation).
    * ``offset`` (2, H, W) float32: ``c_i - p`` as (dy, dx) with the exact (unrounded) centre, for
      thing pixels; 0 elsewhere.
    * ``offset_weight`` (H, W): 1 on thing pixels, 0 elsewhere.
    * ``center_weight`` (H, W): 0 on void (``ignore_index``) pixels and on crowd pixels (thing class,
      instance 0), 1 elsewhere.
    * ``semantic_weight`` (H, W): ``small_weight`` on the pixels of instances with ``A_i <
      small_area`` (when ``weight_small``), 1 elsewhere.
    * ``centers`` (N, 2) float32 ``c_i`` (y, x) and ``instance_ids`` (N,) the instance ids, sorted.
    """
    is_np = not isinstance(semantic, torch.Tensor)
    device = semantic.device if not is_np else torch.device("cpu")
    sem = torch.as_tensor(np.asarray(semantic) if is_np else semantic, device=device).long()
    ins = torch.as_tensor(np.asarray(instance) if is_np else instance, device=device).long()
    if sem.shape != ins.shape or sem.ndim != 2:
        raise ValueError(f"semantic {tuple(sem.shape)} and instance {tuple(ins.shape)} must be equal (H, W) shapes")
    h, w = sem.shape
    lut = torch.as_tensor(_thing_lut(things), device=device)
    in_range = (sem >= 0) & (sem <= 255)
    is_thing_cls = lut[sem.clamp(0, 255)] & in_range
    fg = is_thing_cls & (ins > 0)
    crowd = is_thing_cls & (ins <= 0)

    center = torch.zeros(h, w, dtype=torch.float32, device=device)
    offset = torch.zeros(2, h, w, dtype=torch.float32, device=device)
    sem_w = torch.ones(h, w, dtype=torch.float32, device=device)
    yx = torch.nonzero(fg).to(torch.float64)  # (N, 2) in row-major order, like ins[fg]
    uniq, inv = torch.unique(ins[fg], return_inverse=True)
    n = len(uniq)
    centers = torch.zeros(n, 2, dtype=torch.float64, device=device)
    if n:
        area = torch.bincount(inv, minlength=n).to(torch.float64)
        centers[:, 0] = torch.bincount(inv, weights=yx[:, 0], minlength=n) / area
        centers[:, 1] = torch.bincount(inv, weights=yx[:, 1], minlength=n) / area
        off = centers[inv] - yx
        offset[0][fg] = off[:, 0].float()
        offset[1][fg] = off[:, 1].float()
        if weight_small:
            small = (area < small_area)[inv]
            sem_w[fg] = torch.where(small, torch.full_like(off[:, 0], small_weight), torch.ones_like(off[:, 0])).float()
        r = int(np.ceil(3 * sigma)) + 1
        kernel = _gaussian_kernel(sigma, r, device)
        peaks = torch.floor(centers + 0.5).long().cpu().tolist()
        for cy, cx in peaks:  # one bounded window per instance
            y0, y1, x0, x1 = max(cy - r, 0), min(cy + r + 1, h), max(cx - r, 0), min(cx + r + 1, w)
            g = kernel[y0 - cy + r : y1 - cy + r, x0 - cx + r : x1 - cx + r]
            center[y0:y1, x0:x1] = torch.maximum(center[y0:y1, x0:x1], g)
    out = {
        "center": center,
        "offset": offset,
        "offset_weight": fg.float(),
        "center_weight": (~((sem == ignore_index) | crowd)).float(),
        "semantic_weight": sem_w,
        "centers": centers.float(),
        "instance_ids": uniq,
    }
    if is_np:
        out = {k: v.numpy() for k, v in out.items()}
    return out
