"""Tiny panoptic trees in the on-disk formats: Cityscapes ``gtFine`` with ``_gtFine_instanceIds.png``
and SYNTHIA ``GT/LABELS`` with the instance id in G. Files are written with PIL / OpenCV directly.

Each ``make_*`` returns ``{name: (image, trainIds uint8, expected instances int32)}``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from balda.data.labels import CITYSCAPES_LUT, SYNTHIA_LUT

SIZE = (16, 32)


def cityscapes_maps(rng: np.random.Generator, size=SIZE) -> tuple[np.ndarray, np.ndarray]:
    """``(labelIds uint8, instanceIds int32)`` of one scene: road and sky, two cars, a person, a
    rider, a crowd of persons (id 24 < 1000) and a caravan instance (void class, 29000)."""
    h, w = size
    label_ids = np.full(size, 7, np.uint8)  # road
    label_ids[:3] = 23  # sky
    raw = label_ids.astype(np.int32)
    dx = int(rng.integers(0, 3))

    def put(y0, y1, x0, x1, label_id, value):
        label_ids[y0:y1, x0 + dx : x1 + dx] = label_id
        raw[y0:y1, x0 + dx : x1 + dx] = value

    put(4, 9, 1, 8, 26, 26000)  # car
    put(4, 9, 9, 14, 26, 26001)  # car
    put(2, 11, 16, 19, 24, 24000)  # person
    put(3, 10, 20, 22, 25, 25000)  # rider
    put(10, 14, 23, 28, 24, 24)  # crowd of persons
    put(12, 16, 1, 5, 29, 29000)  # caravan: void in the trainId space
    return label_ids, raw


def expected_cityscapes_instances(raw: np.ndarray) -> np.ndarray:
    trainids = CITYSCAPES_LUT[np.where(raw >= 1000, raw // 1000, raw)]
    return np.where((raw >= 1000) & (trainids != 255), raw, 0).astype(np.int32)


def make_cityscapes_panoptic(root, split: str = "train", cities=None, size=SIZE, seed: int = 0) -> dict:
    """Write ``leftImg8bit`` images and ``gtFine`` labelIds + instanceIds (16-bit, PIL mode "I;16")."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    out = {}
    for city, n in (cities or {"aachen": 2, "bochum": 1}).items():
        idir, gdir = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
        idir.mkdir(parents=True, exist_ok=True)
        gdir.mkdir(parents=True, exist_ok=True)
        for k in range(n):
            stem = f"{city}_{k:06d}_{19 + k:06d}"
            image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            label_ids, raw = cityscapes_maps(rng, size)
            Image.fromarray(image).save(idir / f"{stem}_leftImg8bit.png")
            Image.fromarray(label_ids).save(gdir / f"{stem}_gtFine_labelIds.png")
            Image.fromarray(raw.astype(np.uint16)).save(gdir / f"{stem}_gtFine_instanceIds.png")
            out[stem] = (image, CITYSCAPES_LUT[label_ids], expected_cityscapes_instances(raw))
    return out


def synthia_maps(rng: np.random.Generator, size=SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(class ids uint16, G instance ids uint16, expected instances int32)`` of one SYNTHIA scene:
    two cars (G 5 and 9), a person (G 5: another instance), a truck (G 2; class 18), a pedestrian
    without id (G 0) and road pixels with a stray G value (stuff: no instance)."""
    cls = np.full(size, 3, np.uint16)  # road
    cls[:3] = 1  # sky
    g = np.zeros(size, np.uint16)
    g[12:, 25:] = 7  # stuff with a G value
    dx = int(rng.integers(0, 3))
    exp = np.zeros(size, np.int32)
    # SYNTHIA ids: car 8, person 10, truck 18; instances numbered in (class, G) order
    for y0, y1, x0, x1, c, gid, k in (
        (4, 9, 1, 7, 8, 5, 1),
        (4, 9, 8, 13, 8, 9, 2),
        (2, 11, 15, 18, 10, 5, 3),
        (3, 9, 19, 24, 18, 2, 4),
        (10, 14, 26, 29, 10, 0, 0),
    ):
        cls[y0:y1, x0 + dx : x1 + dx] = c
        g[y0:y1, x0 + dx : x1 + dx] = gid
        exp[y0:y1, x0 + dx : x1 + dx] = k
    return cls, g, exp


def make_synthia_panoptic(root, ids=(0, 1, 2), size=SIZE, seed: int = 0) -> dict:
    """Write ``RAND_CITYSCAPES/RGB`` images and 16-bit BGR ``GT/LABELS`` (class in R, instance in G)."""
    base = Path(root) / "RAND_CITYSCAPES"
    (base / "RGB").mkdir(parents=True, exist_ok=True)
    (base / "GT" / "LABELS").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for i in ids:
        name = f"{i:07d}"
        image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        cls, g, exp = synthia_maps(rng, size)
        bgr = np.zeros((*size, 3), np.uint16)
        bgr[..., 2], bgr[..., 1], bgr[..., 0] = cls, g, 11
        Image.fromarray(image).save(base / "RGB" / f"{name}.png")
        assert cv2.imwrite(str(base / "GT" / "LABELS" / f"{name}.png"), bgr)
        out[name] = (image, SYNTHIA_LUT[cls], exp)
    return out
