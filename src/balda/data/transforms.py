"""Training-time transforms on numpy arrays: resize, random crop (mmseg cat_max_ratio, rare-class
re-draws), horizontal flip, photometric jitter, normalisation.

All randomness comes from an explicit ``np.random.Generator`` so a sample is a pure function of
(image, label, seed): loaders derive the seed from the training step and a resumed run sees the
same crops. Images are ``uint8`` (H, W, 3) RGB, labels ``uint8`` (H, W) trainIds with 255 = ignore.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import cv2
import numpy as np
import torch

from balda.data.labels import IGNORE_INDEX

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def _hw(size, what: str) -> tuple[int, int]:
    if size is None or len(size) != 2 or int(size[0]) < 1 or int(size[1]) < 1:
        raise ValueError(f"{what} must be [height, width] with positive entries, got {size!r}")
    return int(size[0]), int(size[1])


def resize(image: np.ndarray, label: Optional[np.ndarray], size_hw) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Resize the image bilinearly and the label with nearest neighbour to ``size_hw = (h, w)``.

    Uses OpenCV (``INTER_LINEAR`` / ``INTER_NEAREST``, as mmseg does); a size equal to the current one
    returns the inputs unchanged.
    """
    h, w = _hw(size_hw, "resize size")
    if image.shape[:2] != (h, w):
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    if label is not None and label.shape[:2] != (h, w):
        label = cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST)
    return image, label


def pad_to(image: np.ndarray, label: Optional[np.ndarray], min_hw, ignore: int = IGNORE_INDEX):
    """Pad at the bottom/right to at least ``min_hw``: image with 0, label with ``ignore``."""
    H, W = image.shape[:2]
    ph, pw = max(0, min_hw[0] - H), max(0, min_hw[1] - W)
    if ph == 0 and pw == 0:
        return image, label
    img = np.zeros((H + ph, W + pw) + image.shape[2:], dtype=image.dtype)
    img[:H, :W] = image
    if label is not None:
        lab = np.full((H + ph, W + pw), ignore, dtype=label.dtype)
        lab[:H, :W] = label
        label = lab
    return img, label


def _class_counts(label: np.ndarray) -> np.ndarray:
    return np.bincount(label.ravel(), minlength=256)


def random_crop(
    image: np.ndarray,
    label: Optional[np.ndarray],
    crop_hw,
    rng: np.random.Generator,
    cat_max_ratio: float = 1.0,
    ignore: int = IGNORE_INDEX,
    attempts: int = 10,
    required_class: Optional[int] = None,
    min_class_pixels: int = 0,
    return_box: bool = False,
):
    """Random ``crop_hw`` crop of the image and label (and, with ``return_box``, its ``(y, x)`` offset).

    * Inputs smaller than the crop are first padded at the bottom/right (image 0, label ``ignore``).
    * Each crop position is drawn as ``off_h = rng.integers(0, H - h + 1)`` then
      ``off_w = rng.integers(0, W - w + 1)``.
    * ``cat_max_ratio < 1`` (mmseg ``RandomCrop``): up to 10 re-draws; a crop is accepted as soon as it
      holds more than one valid class and the largest class is < ``cat_max_ratio`` of its valid
      pixels; after 10 failed checks the last draw is kept.
    * ``required_class`` (rare class sampling): the crop above is re-drawn up to ``attempts`` times
      until it holds at least ``min_class_pixels`` pixels of that class; if none does, the draw with
      the most pixels of the class is kept.
    """
    ch, cw = _hw(crop_hw, "crop size")
    image, label = pad_to(image, label, (ch, cw), ignore)
    H, W = image.shape[:2]

    def draw():
        return int(rng.integers(0, H - ch + 1)), int(rng.integers(0, W - cw + 1))

    def cat_ok(box) -> bool:
        y, x = box
        cnt = _class_counts(label[y : y + ch, x : x + cw])
        cnt[ignore] = 0
        cnt = cnt[cnt > 0]
        return len(cnt) > 1 and cnt.max() / cnt.sum() < cat_max_ratio

    def draw_checked():
        box = draw()
        if label is not None and cat_max_ratio < 1.0:
            for _ in range(10):
                if cat_ok(box):
                    break
                box = draw()
        return box

    box = draw_checked()
    if label is not None and required_class is not None:
        c = int(required_class)

        def n_class(b):
            y, x = b
            return int(np.count_nonzero(label[y : y + ch, x : x + cw] == c))

        best, best_n = box, n_class(box)
        for _ in range(attempts):
            if best_n >= min_class_pixels:
                break
            box = draw_checked()
            n = n_class(box)
            if n > best_n:
                best, best_n = box, n
        box = best
    y, x = box
    image = image[y : y + ch, x : x + cw]
    if label is not None:
        label = label[y : y + ch, x : x + cw]
    if return_box:
        return image, label, (y, x)
    return image, label


def hflip(image: np.ndarray, label: Optional[np.ndarray]):
    """Mirror image and label left-right (contiguous copies)."""
    image = np.ascontiguousarray(image[:, ::-1])
    if label is not None:
        label = np.ascontiguousarray(label[:, ::-1])
    return image, label


_GREY = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def photometric_jitter(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Colour jitter as torchvision ``ColorJitter(s, s, s, min(s, 0.5))``, applied in random order.

    Factors are drawn in this order: brightness ``b``, contrast ``c``, saturation ``s`` (each
    ``U(max(0, 1 - strength), 1 + strength)``), hue shift ``h ~ U(-min(strength, .5), min(strength, .5))``
    of a full turn, then the order of the four operations (``rng.permutation(4)``).
    brightness: ``x * b``; contrast: ``m + (x - m) * c`` with ``m`` the mean grey level; saturation:
    ``g + (x - g) * s`` with ``g`` the per-pixel grey; hue: rotation of the HSV hue. Returns ``uint8``.
    ``strength == 0`` returns the image unchanged.
    """
    if strength < 0:
        raise ValueError(f"jitter strength must be >= 0, got {strength}")
    if strength == 0:
        return image
    lo, hi = max(0.0, 1.0 - strength), 1.0 + strength
    b, c, s = rng.uniform(lo, hi, size=3)
    hmax = min(strength, 0.5)
    h = rng.uniform(-hmax, hmax)
    order = rng.permutation(4)
    x = image.astype(np.float32)
    for op in order:
        if op == 0:
            x = x * b
        elif op == 1:
            m = float((np.clip(x, 0, 255) @ _GREY).mean())
            x = m + (x - m) * c
        elif op == 2:
            g = (x @ _GREY)[..., None]
            x = g + (x - g) * s
        else:
            u8 = np.clip(np.rint(x), 0, 255).astype(np.uint8)
            hsv = cv2.cvtColor(u8, cv2.COLOR_RGB2HSV_FULL)
            hsv[..., 0] = (hsv[..., 0].astype(np.int32) + int(round(h * 256))) % 256
            x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL).astype(np.float32)
        x = np.clip(x, 0, 255)
    return np.rint(x).astype(np.uint8)


def normalize(
    image: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """``(image - mean) / std`` per channel as a float32 tensor of shape (3, H, W)."""
    m = np.asarray(mean, dtype=np.float32).reshape(1, 1, -1)
    s = np.asarray(std, dtype=np.float32).reshape(1, 1, -1)
    x = (image.astype(np.float32) - m) / s
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def _crop_padded(arr: np.ndarray, yx, crop_hw, fill: int = 0) -> np.ndarray:
    """The ``crop_hw`` window at ``yx`` of ``arr`` padded at the bottom/right with ``fill`` to at least
    the crop size (the label geometry of :func:`random_crop`)."""
    (y, x), (ch, cw) = yx, crop_hw
    H, W = arr.shape[:2]
    if H < ch or W < cw:
        padded = np.full((max(H, ch), max(W, cw)), fill, dtype=arr.dtype)
        padded[:H, :W] = arr
        arr = padded
    return arr[y : y + ch, x : x + cw]


class TrainTransform:
    """resize -> random crop (cat_max_ratio, required class) -> flip -> jitter -> normalise.

    ``__call__(image, label, rng, required_class=None, min_class_pixels=0)`` returns
    ``(image FloatTensor (3, h, w), label LongTensor (h, w))``; an absent label (unlabelled target)
    gives an all-255 label of the output size. Random draws, in order: crop (see
    :func:`random_crop`), flip (``rng.random() < flip``), jitter (only if ``jitter > 0``).
    ``crop=None`` keeps the (resized) size. With ``return_geometry=True`` a last value gives where
    the sample came from: ``crop_box`` ``(y0, x0, y1, x1)`` as fractions of the resized image and
    ``flip`` (applied after the crop); CPSL uses it to align stored whole-image pseudo-labels.

    ``instances`` (an (H, W) integer instance map of the label's size, panoptic labels) follows the
    label's geometry exactly: nearest resize, the same crop box (padding with 0), the same flip; it
    is returned as a LongTensor (h, w) after the label, ``(image, label, instances[, geometry])``.
    It takes no random draw and does not influence any, so image and label are the same with or
    without it.
    """

    def __init__(
        self,
        crop=None,
        resize=None,
        flip: float = 0.5,
        cat_max_ratio: float = 1.0,
        jitter: float = 0.0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        crop_attempts: int = 10,
        ignore: int = IGNORE_INDEX,
    ):
        self.crop = None if crop is None else _hw(crop, "data.crop")
        self.resize = None if resize is None else _hw(resize, "resize")
        if not 0.0 <= flip <= 1.0:
            raise ValueError(f"data.flip must be in [0, 1], got {flip}")
        if not 0.0 < cat_max_ratio <= 1.0:
            raise ValueError(f"data.cat_max_ratio must be in (0, 1], got {cat_max_ratio}")
        if jitter < 0:
            raise ValueError(f"data.jitter must be >= 0, got {jitter}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"data.mean / data.std must be 3 values (std > 0), got {mean}, {std}")
        self.flip = float(flip)
        self.cat_max_ratio = float(cat_max_ratio)
        self.jitter = float(jitter)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.crop_attempts = int(crop_attempts)
        self.ignore = int(ignore)

    @classmethod
    def from_config(cls, data_cfg, dataset_cfg) -> TrainTransform:
        """From a :class:`balda.config.DataConfig` and the :class:`DatasetConfig` being transformed."""
        return cls(
            crop=data_cfg.crop,
            resize=dataset_cfg.resize,
            flip=data_cfg.flip,
            cat_max_ratio=data_cfg.cat_max_ratio,
            jitter=data_cfg.jitter,
            mean=data_cfg.mean,
            std=data_cfg.std,
            crop_attempts=data_cfg.rcs.max_crop_attempts,
        )

    def __repr__(self) -> str:
        return (
            f"TrainTransform(crop={self.crop}, resize={self.resize}, flip={self.flip}, "
            f"cat_max_ratio={self.cat_max_ratio}, jitter={self.jitter})"
        )

    def __call__(
        self,
        image: np.ndarray,
        label: Optional[np.ndarray],
        rng: np.random.Generator,
        required_class: Optional[int] = None,
        min_class_pixels: int = 0,
        return_geometry: bool = False,
        instances: Optional[np.ndarray] = None,
    ):
        if instances is not None:
            if label is None:
                raise ValueError("an instance map needs its semantic label")
            if np.shape(instances)[:2] != np.shape(label)[:2]:
                raise ValueError(f"instance map {np.shape(instances)} and label {np.shape(label)} differ in size")
            instances = np.asarray(instances).astype(np.int32, copy=False)
        if self.resize is not None:
            image, label = resize(image, label, self.resize)
            if instances is not None and instances.shape[:2] != self.resize:
                instances = cv2.resize(instances, self.resize[::-1], interpolation=cv2.INTER_NEAREST)
        H, W = image.shape[:2]
        box = (0.0, 0.0, 1.0, 1.0)
        if self.crop is not None:
            image, label, (y, x) = random_crop(
                image,
                label,
                self.crop,
                rng,
                cat_max_ratio=self.cat_max_ratio,
                ignore=self.ignore,
                attempts=self.crop_attempts,
                required_class=required_class,
                min_class_pixels=min_class_pixels,
                return_box=True,
            )
            box = (y / H, x / W, (y + self.crop[0]) / H, (x + self.crop[1]) / W)
            if instances is not None:
                instances = _crop_padded(instances, (y, x), self.crop)
        flipped = bool(rng.random() < self.flip)
        if flipped:
            image, label = hflip(image, label)
            if instances is not None:
                instances = np.ascontiguousarray(instances[:, ::-1])
        if self.jitter > 0:
            image = photometric_jitter(image, rng, self.jitter)
        img_t = normalize(image, self.mean, self.std)
        if label is None:
            lab_t = torch.full(image.shape[:2], self.ignore, dtype=torch.long)
        else:
            lab_t = torch.from_numpy(np.ascontiguousarray(label).astype(np.int64))
        out = (img_t, lab_t)
        if instances is not None:
            out += (torch.from_numpy(np.ascontiguousarray(instances).astype(np.int64)),)
        if return_geometry:
            out += ({"crop_box": torch.tensor(box, dtype=torch.float32), "flip": torch.tensor(flipped)},)
        return out


__all__ = [
    "resize",
    "pad_to",
    "random_crop",
    "hflip",
    "photometric_jitter",
    "normalize",
    "TrainTransform",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]
