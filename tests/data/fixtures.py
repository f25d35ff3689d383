"""Tiny dataset trees in the exact on-disk formats of Cityscapes, GTA5 and SYNTHIA-RAND-CITYSCAPES.

Files are written directly with PIL / OpenCV (not through balda.data.io) so the readers are tested
against the real formats:

* Cityscapes: ``leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` (RGB) and ``gtFine/...`` with
  ``_gtFine_labelIds.png`` (8-bit grey), ``_gtFine_color.png`` (RGBA), ``_gtFine_instanceIds.png``
  (32-bit 'I') and optionally ``_gtFine_labelTrainIds.png`` (8-bit grey).
* GTA5: ``images/NNNNN.png`` (RGB) and ``labels/NNNNN.png`` (palette PNG of Cityscapes labelIds).
* SYNTHIA: ``RAND_CITYSCAPES/RGB/NNNNNNN.png`` (RGB) and ``RAND_CITYSCAPES/GT/LABELS/NNNNNNN.png``
  (uint16 HxWx3 written by OpenCV: class id at BGR index 2, i.e. the R channel; instance id in G).

Each ``make_*`` returns ``{name: (image uint8 HxWx3, expected trainId label uint8 HxW)}``.
Raw ids are drawn so that every fixture also holds ids that map to 255.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from balda.data.labels import CITYSCAPES_LUT, PALETTE, SYNTHIA_LUT, TRAINID_TO_LABELID, TRAINID_TO_SYNTHIA

#: Cityscapes labelIds used by fixtures: all 19 trained ids plus some that map to 255.
CITYSCAPES_IDS = np.array(list(TRAINID_TO_LABELID) + [0, 1, 4, 6, 9, 14, 29, 34], dtype=np.uint8)
#: SYNTHIA ids used by fixtures: the 16 classes present in SYNTHIA-RAND plus ignored ones (0, 13, 22)
#: and a > 255 id that must map to 255 (not wrap around to 3).
SYNTHIA_IDS = np.array([i for i in TRAINID_TO_SYNTHIA if i not in (16, 18, 20)] + [0, 13, 22], dtype=np.uint16)


def blocky_ids(rng: np.random.Generator, shape, ids, block: int = 4) -> np.ndarray:
    """An (H, W) map of ``ids`` constant on ``block`` x ``block`` tiles (region-like labels)."""
    h, w = shape
    gh, gw = -(-h // block), -(-w // block)
    tiles = rng.choice(np.asarray(ids), size=(gh, gw))
    return np.repeat(np.repeat(tiles, block, axis=0), block, axis=1)[:h, :w]


def random_image(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.integers(0, 256, size=(shape[0], shape[1], 3), dtype=np.uint8)


def _save_palette_png(path: Path, ids: np.ndarray) -> None:
    img = Image.fromarray(ids.astype(np.uint8))
    pal = np.zeros((256, 3), dtype=np.uint8)
    pal[list(TRAINID_TO_LABELID)] = PALETTE  # GTA5 labels are coloured by labelId
    img.putpalette(pal.reshape(-1).tolist())
    assert img.mode == "P"
    img.save(path)


def make_cityscapes(
    root,
    split: str = "train",
    cities=None,
    size=(16, 32),
    train_ids: bool = False,
    labels: bool = True,
    seed: int = 0,
    extras: bool = True,
) -> dict:
    """Write a Cityscapes split; ``cities`` maps city -> number of frames (default aachen 2, bochum 1).

    ``train_ids`` also writes ``_gtFine_labelTrainIds.png``; ``labels=False`` writes no gtFine;
    ``extras`` writes the ``_color`` / ``_instanceIds`` / ``_polygons.json`` files the loader must ignore.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    cities = cities or {"aachen": 2, "bochum": 1}
    out = {}
    for city, n in cities.items():
        idir = root / "leftImg8bit" / split / city
        gdir = root / "gtFine" / split / city
        idir.mkdir(parents=True, exist_ok=True)
        for k in range(n):
            stem = f"{city}_{k:06d}_{19 + k:06d}"
            image = random_image(rng, size)
            Image.fromarray(image).save(idir / f"{stem}_leftImg8bit.png")
            ids = blocky_ids(rng, size, CITYSCAPES_IDS)
            trainids = CITYSCAPES_LUT[ids]
            if labels:
                gdir.mkdir(parents=True, exist_ok=True)
                Image.fromarray(ids).save(gdir / f"{stem}_gtFine_labelIds.png")
                if train_ids:
                    Image.fromarray(trainids).save(gdir / f"{stem}_gtFine_labelTrainIds.png")
                if extras:
                    colour = np.zeros(size + (4,), np.uint8)
                    colour[..., :3] = image
                    colour[..., 3] = 255
                    Image.fromarray(colour).save(gdir / f"{stem}_gtFine_color.png")
                    Image.fromarray(ids.astype(np.uint16) * 1000).save(gdir / f"{stem}_gtFine_instanceIds.png")
                    (gdir / f"{stem}_gtFine_polygons.json").write_text("{}")
            out[stem] = (image, trainids)
    return out


def make_gta5(root, ids=(1, 2, 4), size=(16, 24), seed: int = 0, ids_pool=None) -> dict:
    """Write ``images/NNNNN.png`` + palette ``labels/NNNNN.png`` for the given (non-contiguous) ids."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    pool = CITYSCAPES_IDS if ids_pool is None else np.asarray(ids_pool, dtype=np.uint8)
    out = {}
    for i in ids:
        name = f"{i:05d}"
        image = random_image(rng, size)
        Image.fromarray(image).save(root / "images" / f"{name}.png")
        lab = blocky_ids(rng, size, pool)
        _save_palette_png(root / "labels" / f"{name}.png", lab)
        out[name] = (image, CITYSCAPES_LUT[lab])
    return out


def synthia_label_array(class_ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The uint16 (H, W, 3) BGR array OpenCV writes for a SYNTHIA label: class at index 2."""
    h, w = class_ids.shape
    arr = np.zeros((h, w, 3), dtype=np.uint16)
    arr[..., 2] = class_ids
    arr[..., 1] = rng.integers(0, 2000, size=(h, w))  # instance ids
    return arr


def make_synthia(root, ids=(0, 1, 2), size=(16, 24), seed: int = 0, nested: bool = True) -> dict:
    """Write SYNTHIA-RAND-CITYSCAPES files (under ``root/RAND_CITYSCAPES`` if ``nested``)."""
    base = Path(root) / "RAND_CITYSCAPES" if nested else Path(root)
    rng = np.random.default_rng(seed)
    (base / "RGB").mkdir(parents=True, exist_ok=True)
    (base / "GT" / "LABELS").mkdir(parents=True, exist_ok=True)
    out = {}
    for i in ids:
        name = f"{i:07d}"
        image = random_image(rng, size)
        Image.fromarray(image).save(base / "RGB" / f"{name}.png")
        cls = blocky_ids(rng, size, SYNTHIA_IDS)
        assert cv2.imwrite(str(base / "GT" / "LABELS" / f"{name}.png"), synthia_label_array(cls, rng))
        expected = np.where(cls <= 255, SYNTHIA_LUT[np.minimum(cls, 255)], 255).astype(np.uint8)
        out[name] = (image, expected)
    return out


def corrupt_file(path) -> None:
    """Overwrite ``path`` with bytes that are not an image."""
    Path(path).write_bytes(b"this is not a png file\x00\x01\x02" * 4)


def truncate_file(path, keep: float = 0.5) -> None:
    """Cut ``path`` to its first ``keep`` fraction of bytes (a download interrupted half-way)."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: max(16, int(len(data) * keep))])
