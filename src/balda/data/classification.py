"""Image-classification datasets on disk: image lists and class-folder trees, with their transforms.

Two formats (docs/classification.md):

* **Image list** (Office-31, Office-Home, VisDA-2017, DomainNet as distributed, and the offline
  digits benchmark of :mod:`balda.data.digits`): a text file with one ``relative/path.jpg label``
  line per image; the path is relative to a root folder (by default the list's own folder; an
  absolute path is taken as is) and may hold spaces (the label is the last field); the label is an
  integer in ``0..K-1``. Blank lines and lines starting with ``#`` are skipped. Items keep the list
  order; an item's name is its path as written in the list.
* **Class folders** (torchvision ``ImageFolder``): ``root/<class_name>/**/*.jpg``; classes are the
  sub-folders sorted by name (or the given ``classes``, in that order), label = position; images
  are sorted within each class.

What is an error (:class:`~balda.core.errors.DataError`, whose message names the file and, for a
list, ``list.txt:LINE``): a missing list / root folder, an undecodable list, a malformed line (not
``path label``, a non-integer label), a label outside ``0..K-1`` (``K`` = ``len(classes)``, else
``num_classes``, else the largest label + 1), a list without entries, a class folder without
images, a listed image that does not exist (checked at construction, ``check_files=True``) and an
image that cannot be decoded (at :meth:`ClassificationDataset.load`). With ``on_error='skip'``
missing images are dropped at construction with one warning, and a training view calls
:meth:`~ClassificationDataset.load_or_skip`, which logs an undecodable item once and moves on to
the next readable one; malformed lines and bad labels stay errors (they are not "unreadable items").

Transforms (:class:`ClsTransform`) work on numpy ``uint8`` HxWx3 RGB and return ``torch.uint8``
(3, h, w) tensors; the normalisation to float happens at batching (:class:`ClsCollate`, with the
mean/std the model expects, e.g. ``model.input_mean``), which keeps worker-to-trainer transfers 4x
smaller. A batch is ``{"image": (B, 3, H, W) float32 normalised, "label": (B,) long, "index": (B,)
long}``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from balda.core.errors import DataError
from balda.data.io import first_readable, read_image
from balda.data.transforms import IMAGENET_MEAN, IMAGENET_STD, hflip, pad_to, photometric_jitter, random_crop

log = logging.getLogger("balda.data")

__all__ = [
    "ClassificationDataset",
    "ImageListDataset",
    "ClassFolderDataset",
    "open_classification_dataset",
    "parse_image_list",
    "ClsTransform",
    "ClsView",
    "ClsCollate",
    "normalize_batch",
    "IMG_EXTENSIONS",
]

PathLike = Union[str, os.PathLike]

#: Extensions (lower case) of the images a class-folder tree is scanned for.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
_SHOW = 5


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _fmt(items: Sequence[str]) -> str:
    return ", ".join(items[:_SHOW]) + (f", ... ({len(items) - _SHOW} more)" if len(items) > _SHOW else "")


class ClassificationDataset:
    """Indexed (image file, class label) pairs.

    Attributes: ``root``, ``image_paths`` (list of Path), ``labels`` (int64 array), ``names`` (stable
    item names), ``classes`` (class names, index = label), ``num_classes``, ``on_error``
    ('raise' | 'skip') and ``sources`` (per item, the ``(list file, line)`` it came from, or None).
    """

    kind = "base"

    def __init__(
        self,
        root: PathLike,
        names: list[str],
        image_paths: list[Path],
        labels: Sequence[int],
        classes: Sequence[str],
        sources: Optional[list[tuple[Path, int]]] = None,
        on_error: str = "raise",
        max_items: Optional[int] = None,
    ):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if max_items is not None and max_items < 1:
            raise ValueError(f"max_items must be >= 1 or None, got {max_items}")
        n = len(names) if max_items is None else min(len(names), int(max_items))
        self.root = Path(root)
        self.on_error = on_error
        self.names = list(names[:n])
        self.image_paths = [Path(p) for p in image_paths[:n]]
        self.labels = np.asarray(labels[:n], dtype=np.int64)
        self.classes = [str(c) for c in classes]
        self.num_classes = len(self.classes)
        self.sources = None if sources is None else list(sources[:n])
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, n={len(self)}, num_classes={self.num_classes})"

    def _check(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {self!r}")
        return int(i) % n

    def where(self, i: int) -> str:
        """Where item ``i`` is defined: ``'list.txt:LINE'`` for a list, else its image path."""
        i = self._check(i)
        if self.sources is None:
            return str(self.image_paths[i])
        f, line = self.sources[i]
        return f"{f}:{line}"

    def load(self, i: int) -> tuple[np.ndarray, int]:
        """``(image uint8 (H, W, 3) RGB, label int)`` of item ``i``; a missing or undecodable image
        raises :class:`DataError` naming the image (and the list line it is listed at)."""
        i = self._check(i)
        try:
            image = read_image(self.image_paths[i])
        except DataError as e:
            if self.sources is None:
                raise
            raise DataError(f"{e} (listed at {self.where(i)})", self.image_paths[i]) from e
        return image, int(self.labels[i])

    def load_or_skip(self, i: int) -> tuple[int, np.ndarray, int]:
        """``(i_used, image, label)``: item ``i`` or, if unreadable, the next readable one. Each
        unreadable item is logged once (logger ``balda.data``) and skipped without touching the
        disk afterwards. Raises :class:`DataError` if no item is readable."""
        return first_readable(self, self.load, i)

    def class_counts(self) -> np.ndarray:
        """Number of items per class, int64 (K,)."""
        return np.bincount(self.labels, minlength=self.num_classes).astype(np.int64)

    def fingerprint(self) -> str:
        """A hash of the kind, classes, item names and labels (not of where the dataset lives)."""
        payload = json.dumps([self.kind, self.classes, self.names, self.labels.tolist()], separators=(",", ":"))
        return hashlib.sha1(payload.encode()).hexdigest()


# ----------------------------------------------------------------------------------------- image list
def parse_image_list(list_file: PathLike) -> list[tuple[int, str, int]]:
    """The entries ``(line number, path, label)`` of an image list (1-based lines; blank and ``#``
    lines skipped). The label is the last whitespace-separated field, so paths may hold spaces.
    Raises :class:`DataError` naming ``file:line`` for a malformed line, and the file when it is
    missing, undecodable or holds no entry."""
    list_file = Path(list_file)
    if not list_file.is_file():
        raise DataError(f"image list not found: {list_file}", list_file)
    try:
        text = list_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read image list {list_file}: {type(e).__name__}: {e}", list_file) from e
    entries = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            raise DataError(f"{list_file}:{lineno}: malformed line {raw!r}; expected 'relative/path label'", list_file)
        try:
            label = int(parts[1])
        except ValueError:
            raise DataError(
                f"{list_file}:{lineno}: label {parts[1]!r} is not an integer (line {raw!r}; "
                "expected 'relative/path label')",
                list_file,
            ) from None
        entries.append((lineno, parts[0], label))
    if not entries:
        raise DataError(f"image list {list_file} holds no entries (only blank or # lines)", list_file)
    return entries


def _infer_classes(paths: Sequence[str], labels: np.ndarray, k: int) -> list[str]:
    """Class names from the lists' folders: the parent folder of every item of class ``c`` when it
    is the same for all of them and distinct across classes (Office / Office-Home / DomainNet
    lists), else ``'0'..'K-1'``."""
    parents: dict[int, set[str]] = {}
    for p, y in zip(paths, labels.tolist()):
        parents.setdefault(y, set()).add(Path(p).parent.name)
    names = []
    for c in range(k):
        s = parents.get(c, set())
        if len(s) != 1 or not next(iter(s)):
            return [str(c) for c in range(k)]
        names.append(next(iter(s)))
    return names if len(set(names)) == k else [str(c) for c in range(k)]


class ImageListDataset(ClassificationDataset):
    """An image list (see the module docstring).

    Args:
        list_file: the ``path label`` text file.
        root: folder the paths are relative to (default: the list file's folder).
        classes: class names (index = label); fixes ``K = len(classes)``.
        num_classes: ``K`` when ``classes`` is not given (default: largest label + 1). Class names
            are then inferred from the items' parent folders when unambiguous, else ``'0'..'K-1'``.
        on_error: 'raise' or 'skip' (missing images dropped with a warning; unreadable ones skipped
            by :meth:`load_or_skip`).
        check_files: check at construction that every listed image exists.
        max_items: keep only the first items.
    """

    kind = "image_list"

    def __init__(
        self,
        list_file: PathLike,
        root: Optional[PathLike] = None,
        classes: Optional[Sequence[str]] = None,
        num_classes: Optional[int] = None,
        on_error: str = "raise",
        check_files: bool = True,
        max_items: Optional[int] = None,
    ):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        list_file = Path(list_file)
        entries = parse_image_list(list_file)
        root = Path(root) if root is not None else list_file.parent
        if not root.is_dir():
            raise DataError(f"image root folder not found: {root} (root of the list {list_file})", root)
        if classes is not None and num_classes is not None and len(classes) != num_classes:
            raise ValueError(f"{len(classes)} class names given but num_classes={num_classes}")
        labels = np.array([e[2] for e in entries], dtype=np.int64)
        k = len(classes) if classes is not None else (int(num_classes) if num_classes is not None else None)
        if k is None:
            k = int(labels.max()) + 1 if labels.max() >= 0 else 0
        bad = np.flatnonzero((labels < 0) | (labels >= k))
        if bad.size:
            lineno, path, y = entries[int(bad[0])]
            more = f" ({bad.size - 1} more such lines)" if bad.size > 1 else ""
            raise DataError(
                f"{list_file}:{lineno}: label {y} of {path!r} is outside 0..{k - 1} ({k} classes){more}", list_file
            )
        names, image_paths, keep, sources, missing = [], [], [], [], []
        for n, (lineno, path, _) in enumerate(entries):
            p = root / path
            if check_files and not p.is_file():
                if on_error == "raise":
                    raise DataError(
                        f"{list_file}:{lineno}: image {p} not found (on_error=skip drops missing images)", p
                    )
                missing.append(f"{path} (line {lineno})")
                continue
            names.append(path)
            image_paths.append(p)
            keep.append(n)
            sources.append((list_file, lineno))
        if missing:
            log.warning("%s: skipping %d missing image(s): %s", list_file, len(missing), _fmt(missing))
        if not names:
            raise DataError(f"image list {list_file}: none of its {len(entries)} images exists under {root}", list_file)
        if len(set(names)) != len(names):
            log.warning("%s lists %d image(s) more than once", list_file, len(names) - len(set(names)))
        if classes is None:
            classes = _infer_classes([e[1] for e in entries], labels, k)
        self.list_file = list_file
        super().__init__(root, names, image_paths, labels[keep], classes, sources, on_error, max_items)


# -------------------------------------------------------------------------------------- class folders
class ClassFolderDataset(ClassificationDataset):
    """A class-folder tree ``root/<class_name>/**/<image>`` (torchvision ``ImageFolder`` layout).

    Classes are the non-hidden sub-folders of ``root`` sorted by name, or ``classes`` in the given
    order (each must exist). Images (``extensions``, case-insensitive, hidden files skipped) are
    found recursively and sorted; names are paths relative to ``root``. A class folder without
    images is an error (``on_error='skip'``: a warning; the class keeps its label).
    """

    kind = "class_folders"

    def __init__(
        self,
        root: PathLike,
        classes: Optional[Sequence[str]] = None,
        extensions: Sequence[str] = IMG_EXTENSIONS,
        on_error: str = "raise",
        max_items: Optional[int] = None,
    ):
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"class-folder root not found: {root}", root)
        if classes is None:
            classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
            if not classes:
                raise DataError(f"class-folder root {root} holds no class sub-folders", root)
        exts = tuple(e.lower() for e in extensions)
        names, image_paths, labels, empty = [], [], [], []
        for c, cls in enumerate(classes):
            d = root / cls
            if not d.is_dir():
                raise DataError(f"class folder {d} not found (class {c} {cls!r})", d)
            files = sorted(
                p for p in d.rglob("*") if p.suffix.lower() in exts and p.is_file() and not _hidden(p.relative_to(d))
            )
            if not files:
                if on_error == "raise":
                    raise DataError(f"class folder {d} holds no images ({', '.join(exts)})", d)
                empty.append(str(cls))
            for p in files:
                names.append(p.relative_to(root).as_posix())
                image_paths.append(p)
                labels.append(c)
        if empty:
            log.warning("%s: %d class folder(s) without images: %s", root, len(empty), _fmt(empty))
        if not names:
            raise DataError(f"class-folder tree {root} holds no images", root)
        super().__init__(root, names, image_paths, labels, classes, None, on_error, max_items)


def open_classification_dataset(path: PathLike, root: Optional[PathLike] = None, **kwargs) -> ClassificationDataset:
    """An :class:`ImageListDataset` when ``path`` is a file, a :class:`ClassFolderDataset` when it is
    a folder; ``kwargs`` go to the constructor (the list-only ``root``, ``num_classes`` and
    ``check_files`` are ignored for a folder)."""
    path = Path(path)
    if path.is_file():
        return ImageListDataset(path, root=root, **kwargs)
    if path.is_dir():
        kwargs.pop("num_classes", None)
        kwargs.pop("check_files", None)
        return ClassFolderDataset(path, **kwargs)
    raise DataError(f"classification data not found: {path} (expected an image list file or a class-folder tree)", path)


# ------------------------------------------------------------------------------------------ transforms
def _size(v, what: str) -> Optional[tuple[int, int]]:
    if v is None:
        return None
    if isinstance(v, (int, np.integer)):
        v = (int(v), int(v))
    if len(v) != 2 or int(v[0]) < 1 or int(v[1]) < 1:
        raise ValueError(f"{what} must be an int or [height, width] with positive entries, got {v!r}")
    return int(v[0]), int(v[1])


def _resize(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Resize to ``(h, w)``: area averaging when shrinking (no aliasing), bilinear when enlarging."""
    h, w = hw
    if image.shape[:2] == (h, w):
        return image
    shrink = h * w < image.shape[0] * image.shape[1]
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _center_crop(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    image, _ = pad_to(image, None, hw)
    H, W = image.shape[:2]
    y, x = (H - hw[0]) // 2, (W - hw[1]) // 2
    return image[y : y + hw[0], x : x + hw[1]]


class ClsTransform:
    """Classification pipeline on a ``uint8`` (H, W, 3) image -> ``torch.uint8`` (3, h, w).

    Training (``train=True``, tllib's ``ResizeImage(256) -> RandomCrop(224) -> RandomHorizontalFlip``):
    resize to ``resize`` (an int means a square; area averaging when shrinking, bilinear when
    enlarging), a random ``crop`` (offsets ``rng.integers(0, H - h + 1)`` then ``(0, W - w + 1)``;
    smaller images are zero-padded at the bottom/right), a horizontal flip with probability ``flip``
    (``rng.random() < flip``), then the colour jitter of
    :func:`~balda.data.transforms.photometric_jitter` when ``jitter > 0``. Evaluation
    (``train=False``): resize, then the centre ``crop``; no randomness. ``None`` skips a step.
    The output is not normalised (:class:`ClsCollate` does it).
    """

    def __init__(self, resize=None, crop=None, train: bool = True, flip: float = 0.5, jitter: float = 0.0):
        self.resize = _size(resize, "resize")
        self.crop = _size(crop, "crop")
        if not 0.0 <= flip <= 1.0:
            raise ValueError(f"flip must be in [0, 1], got {flip}")
        if jitter < 0:
            raise ValueError(f"jitter must be >= 0, got {jitter}")
        self.train = bool(train)
        self.flip = float(flip)
        self.jitter = float(jitter)

    def __repr__(self) -> str:
        return f"ClsTransform(resize={self.resize}, crop={self.crop}, train={self.train}, flip={self.flip})"

    def __call__(self, image: np.ndarray, rng: Optional[np.random.Generator] = None) -> torch.Tensor:
        if self.resize is not None:
            image = _resize(image, self.resize)
        if self.train:
            if rng is None:
                raise ValueError("a training ClsTransform needs an explicit np.random.Generator")
            if self.crop is not None:
                image, _ = random_crop(image, None, self.crop, rng)
            if rng.random() < self.flip:
                image, _ = hflip(image, None)
            if self.jitter > 0:
                image = photometric_jitter(image, rng, self.jitter)
        elif self.crop is not None:
            image = _center_crop(image, self.crop)
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


class ClsView(Dataset):
    """Torch dataset over a :class:`ClassificationDataset` with a :class:`ClsTransform`.

    A key is an index ``i`` (transform seed ``i``) or a tuple ``(index, sample_seed, ...)`` as
    :class:`balda.data.loaders.StepBatchSampler` yields (extra fields ignored), so training batches
    are a pure function of ``(seed, step)``. ``__getitem__`` returns ``{"image": uint8 (3, h, w),
    "label": long (), "index": long ()}`` with ``index`` the item actually used (``on_error='skip'``:
    possibly a later one).
    """

    def __init__(self, dataset: ClassificationDataset, transform: ClsTransform, on_error: Optional[str] = None):
        on_error = dataset.on_error if on_error is None else on_error
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.dataset, self.transform, self.on_error = dataset, transform, on_error

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key) -> dict:
        if isinstance(key, (int, np.integer)):
            index, seed = int(key), int(key)
        else:
            index, seed = int(key[0]), int(key[1])
        if self.on_error == "skip":
            index, image, label = self.dataset.load_or_skip(index)
        else:
            image, label = self.dataset.load(index)
        img = self.transform(image, np.random.default_rng(seed))
        return {"image": img, "label": torch.tensor(label, dtype=torch.long), "index": torch.tensor(index)}


def normalize_batch(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x - mean) / std`` per channel of a (B, 3, H, W) batch (0-255 units), as float32."""
    m = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return (images.float() - m) / s


class ClsCollate:
    """Batch collate of :class:`ClsView` samples: ``{"image": (B, 3, H, W) float32 (x - mean) / std,
    "label": (B,) long, "index": (B,) long}``. ``mean``/``std`` in 0-255 units (default ImageNet;
    pass ``model.input_mean`` / ``model.input_std``). Picklable, for loader workers."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean / std must be 3 values (std > 0), got {mean}, {std}")
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)

    def __call__(self, samples: Sequence[dict]) -> dict:
        images = torch.stack([s["image"] for s in samples])
        return {
            "image": normalize_batch(images, self.mean, self.std),
            "label": torch.stack([torch.as_tensor(s["label"], dtype=torch.long) for s in samples]),
            "index": torch.stack([torch.as_tensor(s["index"], dtype=torch.long) for s in samples]),
        }
