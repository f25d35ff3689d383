"""Label spaces: the canonical 19-class Cityscapes trainId space and the maps into it.

Every dataset is mapped into one canonical space of 19 Cityscapes trainIds (0..18) with
``IGNORE_INDEX = 255`` (docs/datasets.md). Subsets used by SYNTHIA papers are *evaluation
views* over that space (SYNTHIA-16, SYNTHIA-13): classes are never renumbered.

Mapping is a single indexing operation through a 256-entry lookup table (``LUT[ids]``), for
numpy arrays and torch tensors alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = 255
NUM_CLASSES = 19

CLASS_NAMES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)

#: Official Cityscapes colours of the 19 trainIds (RGB).
PALETTE: np.ndarray = np.array(
    [
        (128, 64, 128),
        (244, 35, 232),
        (70, 70, 70),
        (102, 102, 156),
        (190, 153, 153),
        (153, 153, 153),
        (250, 170, 30),
        (220, 220, 0),
        (107, 142, 35),
        (152, 251, 152),
        (70, 130, 180),
        (220, 20, 60),
        (255, 0, 0),
        (0, 0, 142),
        (0, 0, 70),
        (0, 60, 100),
        (0, 80, 100),
        (0, 0, 230),
        (119, 11, 32),
    ],
    dtype=np.uint8,
)

#: Cityscapes / GTA5 labelId of each trainId.
TRAINID_TO_LABELID: tuple[int, ...] = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)

#: SYNTHIA class id of each trainId (terrain 16, truck 18 and train 20 never occur in SYNTHIA-RAND).
TRAINID_TO_SYNTHIA: tuple[int, ...] = (3, 4, 2, 21, 5, 7, 15, 9, 6, 16, 1, 10, 17, 8, 18, 19, 20, 12, 11)


def _build_lut(ids: tuple[int, ...]) -> np.ndarray:
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for train_id, raw in enumerate(ids):
        lut[raw] = train_id
    return lut


#: 256-entry LUT: Cityscapes/GTA5 labelId -> trainId (255 for every unlisted id).
CITYSCAPES_LUT: np.ndarray = _build_lut(TRAINID_TO_LABELID)
#: 256-entry LUT: SYNTHIA id -> trainId.
SYNTHIA_LUT: np.ndarray = _build_lut(TRAINID_TO_SYNTHIA)
#: trainId -> Cityscapes labelId for export (255 -> 0, "unlabeled").
TRAINID_TO_LABELID_LUT: np.ndarray = np.zeros(256, dtype=np.uint8)
TRAINID_TO_LABELID_LUT[:NUM_CLASSES] = TRAINID_TO_LABELID


@dataclass(frozen=True)
class ClassView:
    """An evaluation view: a subset of the canonical classes that mIoU is averaged over."""

    name: str
    class_ids: tuple[int, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(CLASS_NAMES[c] for c in self.class_ids)

    def __len__(self) -> int:
        return len(self.class_ids)


VIEW_19 = ClassView("19", tuple(range(NUM_CLASSES)))
#: SYNTHIA-16: drops terrain (9), truck (14), train (16).
VIEW_16 = ClassView("16", tuple(c for c in range(NUM_CLASSES) if c not in (9, 14, 16)))
#: SYNTHIA-13: additionally drops wall (3), fence (4), pole (5).
VIEW_13 = ClassView("13", tuple(c for c in range(NUM_CLASSES) if c not in (3, 4, 5, 9, 14, 16)))
VIEWS = {"19": VIEW_19, "16": VIEW_16, "13": VIEW_13}


def get_view(name: str | int) -> ClassView:
    """Return the evaluation view called ``name`` ('19', '16' or '13')."""
    key = str(name)
    if key not in VIEWS:
        raise ValueError(f"unknown class view {name!r}; expected one of {sorted(VIEWS)}")
    return VIEWS[key]


def map_labels(ids, lut: np.ndarray):
    """Map raw ids to trainIds with one indexing op through ``lut`` (numpy array or torch tensor).

    Values outside 0..255 (e.g. -1 in some Cityscapes tools) map to ``IGNORE_INDEX``.
    """
    try:
        import torch
    except ImportError:  # pragma: no cover
        torch = None
    if torch is not None and isinstance(ids, torch.Tensor):
        t = torch.as_tensor(lut, device=ids.device).long()
        ids_l = ids.long()
        valid = (ids_l >= 0) & (ids_l <= 255)
        out = t[ids_l.clamp(0, 255)]
        return torch.where(valid, out, torch.full_like(out, IGNORE_INDEX))
    arr = np.asarray(ids)
    if arr.dtype == np.uint8:
        return lut[arr]
    arr = arr.astype(np.int64)
    valid = (arr >= 0) & (arr <= 255)
    return np.where(valid, lut[np.clip(arr, 0, 255)], IGNORE_INDEX).astype(np.uint8)


def colorize(label: np.ndarray) -> np.ndarray:
    """Colourise an (H, W) trainId map with the Cityscapes palette; ignore is black. Returns HxWx3 uint8."""
    pal = np.zeros((256, 3), dtype=np.uint8)
    pal[:NUM_CLASSES] = PALETTE
    return pal[np.asarray(label).astype(np.uint8)]


#: Raw ids a Cityscapes/GTA5 ``labelIds`` file may hold: the Cityscapes label ids 0..33 (19 train
#: classes and the void ids), 34 (listed among the void ids by the datasets' conventions) and 255
#: (license plate, -1, as stored in uint8).
CITYSCAPES_VALID_IDS: frozenset[int] = frozenset([*range(35), 255])
#: Raw class ids a SYNTHIA-RAND-CITYSCAPES label may hold (0 void .. 22).
SYNTHIA_VALID_IDS: frozenset[int] = frozenset(range(23))


def invalid_ids(raw: np.ndarray, valid: frozenset[int]) -> list[int]:
    """The values of ``raw`` outside ``valid`` (at most 10, sorted; ``[]`` if all are valid). One
    lookup-table pass over the map; ``np.unique`` only runs when something is invalid."""
    arr = np.asarray(raw)
    hi = int(arr.max(initial=0))
    table = np.zeros(max(hi, max(valid)) + 1, dtype=bool)
    table[list(valid)] = True
    ok = table[np.clip(arr.astype(np.int64, copy=False), 0, None)] & (arr >= 0)
    if ok.all():
        return []
    return [int(v) for v in np.unique(arr[~ok])[:10]]
