r"""Annotation of acquired pixels and the on-disk store of the labels collected so far.

* :class:`Annotator` is the interface: ``annotate(name, index, mask) -> label`` returns a ``uint8``
  (H, W) trainId map holding the labels of the pixels of ``mask`` and 255 elsewhere.
  :class:`OracleAnnotator` simulates the annotator with the ground truth of the target train split
  (``dataset.load(i) -> (image, label)``; the dataset must be built with ``labelled=True``).
* :class:`LabelStore` keeps, under ``root``:

  - ``masks/<name>.png``: ``uint8`` trainIds of the labelled pixels, 255 = unlabelled (or void);
  - ``acquired/<name>.png``: ``uint8``, 0 = never acquired, ``r + 1`` = acquired in round ``r``
    (this keeps void pixels that were paid for from being selected again, and makes rounds
    idempotent: re-applying round ``r`` after a crash gives the same masks and statistics);
  - ``rounds/round_XX.npz``: the selected centres of round ``XX`` (written before any mask, so a
    resumed round re-applies the same selection instead of re-scoring a half-updated store);
  - ``manifest.json``: image names, rounds done and per-round statistics (pixel counts per class,
    acquired pixels, budget used), the cumulative labelled-class histogram.

  Every file is written atomically (temporary file + ``os.replace``), so a data-loader worker reading
  a mask while a round is being written sees either the old or the new mask.
  A human labelling tool can fill ``masks/`` for the pixels with ``acquired == r + 1`` instead of the
  oracle (see :meth:`LabelStore.apply`).

:meth:`LabelStore.label_filter` is what the target data loader calls on the full (possibly resized)
label map *before* cropping / flipping: it returns the stored annotations (nearest-resized to the
label's shape if needed) and 255 outside the acquired pixels.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image

from balda.core.atomic import atomic_write
from balda.data.labels import IGNORE_INDEX, NUM_CLASSES

__all__ = ["Annotator", "OracleAnnotator", "LabelStore"]


class Annotator:
    """Interface of an annotator: labels of the pixels of ``mask``, 255 elsewhere."""

    def annotate(self, name: str, index: int, mask: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError


def _as_label_array(label: Any) -> Optional[np.ndarray]:
    if label is None:
        return None
    try:
        import torch

        if isinstance(label, torch.Tensor):
            label = label.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    arr = np.asarray(label)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    return arr


class OracleAnnotator(Annotator):
    """Simulated annotator: the ground truth of ``dataset`` (``load(i) -> (image, label)``)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def annotate(self, name: str, index: int, mask: np.ndarray) -> np.ndarray:
        mask = np.asarray(mask, dtype=bool)
        _, label = self.dataset.load(index)
        label = _as_label_array(label)
        if label is None:
            raise ValueError(
                f"OracleAnnotator: image {name!r} (index {index}) has no label; build the "
                "target train set with labelled=True"
            )
        if label.shape != mask.shape:
            raise ValueError(f"OracleAnnotator: label of {name!r} is {label.shape}, mask is {mask.shape}")
        out = np.full(mask.shape, IGNORE_INDEX, dtype=np.uint8)
        out[mask] = label[mask].astype(np.uint8)
        return out


# ------------------------------------------------------------------------------------- atomic io
def _write_png(path: Path, arr: np.ndarray) -> None:
    img = Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8))  # 2-D uint8 -> mode "L"
    atomic_write(path, lambda f: img.save(f, format="PNG"))


def _read_png(path: Path) -> Optional[np.ndarray]:
    if not path.is_file():
        return None
    with Image.open(path) as im:
        return np.array(im, dtype=np.uint8)


def _resize_nearest(arr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if arr.shape == tuple(shape):
        return arr
    import cv2

    return cv2.resize(arr, (int(shape[1]), int(shape[0])), interpolation=cv2.INTER_NEAREST)


# --------------------------------------------------------------------------------------- store
class LabelStore:
    """Labels acquired so far, on disk under ``root`` (module docstring)."""

    MANIFEST = "manifest.json"

    def __init__(self, root, names: Optional[Sequence[str]] = None, num_classes: int = NUM_CLASSES):
        self.root = Path(root)
        self.num_classes = int(num_classes)
        self._names: Optional[list[str]] = list(names) if names is not None else None

    # -------------------------------------------------------------------------------- paths
    def mask_path(self, name: str) -> Path:
        return self.root / "masks" / f"{name}.png"

    def acquired_path(self, name: str) -> Path:
        return self.root / "acquired" / f"{name}.png"

    def selection_path(self, round_idx: int) -> Path:
        return self.root / "rounds" / f"round_{round_idx:02d}.npz"

    @property
    def manifest_path(self) -> Path:
        return self.root / self.MANIFEST

    # ------------------------------------------------------------------------------ manifest
    def manifest(self) -> dict:
        """The manifest (a fresh default if none was written yet)."""
        if self.manifest_path.is_file():
            data = json.loads(self.manifest_path.read_text())
            return data
        return {
            "version": 1,
            "num_classes": self.num_classes,
            "names": self._names,
            "rounds": {},
            "rounds_done": [],
            "budget_used": 0,
            "labelled_hist": [0] * self.num_classes,
        }

    def _write_manifest(self, data: dict) -> None:
        text = json.dumps(data, indent=1).encode()
        atomic_write(self.manifest_path, lambda f: f.write(text))

    def set_names(self, names: Sequence[str]) -> None:
        """Bind image names (index -> name) and record them in the manifest (checked if present)."""
        names = [str(n) for n in names]
        data = self.manifest()
        if data.get("names") and list(data["names"]) != names:
            raise ValueError(
                f"LabelStore {self.root}: the target image list differs from the one in "
                f"{self.manifest_path} ({len(data['names'])} vs {len(names)} images)"
            )
        self._names = names
        if not data.get("names"):
            data["names"] = names
            self._write_manifest(data)

    @property
    def names(self) -> Optional[list[str]]:
        if self._names is None and self.manifest_path.is_file():
            self._names = self.manifest().get("names")
        return self._names

    def name_of(self, index: int) -> Optional[str]:
        names = self.names
        if names is None or not (0 <= int(index) < len(names)):
            return None
        return names[int(index)]

    def rounds_done(self) -> list[int]:
        return sorted(int(r) for r in self.manifest().get("rounds_done", []))

    def is_done(self, round_idx: int) -> bool:
        return int(round_idx) in self.rounds_done()

    def round_stats(self, round_idx: int) -> Optional[dict]:
        return self.manifest().get("rounds", {}).get(str(int(round_idx)))

    def commit_round(self, round_idx: int, stats: dict) -> None:
        """Record round ``round_idx`` as done with its statistics (``pixels_per_class``,
        ``acquired_pixels``...), update the cumulative histogram and budget used."""
        data = self.manifest()
        if self._names is not None and not data.get("names"):
            data["names"] = self._names
        data.setdefault("rounds", {})[str(int(round_idx))] = stats
        done = {int(r) for r in data.get("rounds_done", [])}
        done.add(int(round_idx))
        data["rounds_done"] = sorted(done)
        hist = np.zeros(self.num_classes, dtype=np.int64)
        used = 0
        for r in data["rounds_done"]:
            st = data["rounds"][str(r)]
            hist += np.asarray(st.get("pixels_per_class", [0] * self.num_classes), dtype=np.int64)
            used += int(st.get("acquired_pixels", 0))
        data["labelled_hist"] = hist.tolist()
        data["budget_used"] = used
        self._write_manifest(data)

    # ---------------------------------------------------------------------------- histograms
    def class_histogram(self, upto_round: Optional[int] = None) -> np.ndarray:
        """Labelled pixels per class (void excluded) over the rounds done (``<= upto_round``)."""
        data = self.manifest()
        hist = np.zeros(self.num_classes, dtype=np.int64)
        for r in data.get("rounds_done", []):
            if upto_round is None or int(r) <= upto_round:
                hist += np.asarray(data["rounds"][str(r)]["pixels_per_class"], dtype=np.int64)
        return hist

    def round_histograms(self) -> dict[int, np.ndarray]:
        """Per-round labelled pixels per class: ``{round: counts (K,)}``."""
        data = self.manifest()
        return {
            int(r): np.asarray(data["rounds"][str(r)]["pixels_per_class"], dtype=np.int64)
            for r in data.get("rounds_done", [])
        }

    # -------------------------------------------------------------------------------- masks
    def read(self, name: str) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        """``(labels, acquired)`` uint8 maps of image ``name`` (``None`` if never acquired)."""
        return _read_png(self.mask_path(name)), _read_png(self.acquired_path(name))

    def acquired_mask(self, name: str, shape: Optional[tuple[int, int]] = None) -> Optional[np.ndarray]:
        """Bool (H, W) mask of every pixel acquired so far (void included), or ``None``."""
        acq = _read_png(self.acquired_path(name))
        if acq is None:
            return None
        if shape is not None:
            acq = _resize_nearest(acq, shape)
        return acq > 0

    def apply(
        self, index: int, name: str, selection: np.ndarray, annotator: Annotator, round_idx: int
    ) -> tuple[np.ndarray, int]:
        """Acquire the pixels of ``selection`` (bool H x W) in round ``round_idx``: mark them, ask
        ``annotator`` for the pixels new in this round, write both maps. Idempotent.

        Returns ``(counts (K,), acquired)``: labelled pixels per class and acquired pixels (void
        included) of this image in this round.
        """
        selection = np.asarray(selection, dtype=bool)
        labels, acq = self.read(name)
        if labels is None:
            labels = np.full(selection.shape, IGNORE_INDEX, dtype=np.uint8)
        if acq is None:
            acq = np.zeros(selection.shape, dtype=np.uint8)
        if labels.shape != selection.shape or acq.shape != selection.shape:
            raise ValueError(f"LabelStore: stored masks of {name!r} are {labels.shape}, selection is {selection.shape}")
        tag = int(round_idx) + 1
        if tag > 255:
            raise ValueError("LabelStore supports at most 255 rounds")
        acq = acq.copy()
        acq[selection & (acq == 0)] = tag
        new = acq == tag
        ann = np.asarray(annotator.annotate(name, index, new), dtype=np.uint8)
        if ann.shape != new.shape:
            raise ValueError(f"annotator returned {ann.shape} for {name!r}, expected {new.shape}")
        labels = labels.copy()
        labels[new] = ann[new]
        _write_png(self.acquired_path(name), acq)
        _write_png(self.mask_path(name), labels)
        vals = labels[new]
        counts = np.bincount(vals[vals < self.num_classes], minlength=self.num_classes)[: self.num_classes]
        return counts.astype(np.int64), int(new.sum())

    # ----------------------------------------------------------------------------- selection
    def save_selection(
        self, round_idx: int, picks: dict, shapes: dict, radius: int, info: Optional[dict] = None
    ) -> None:
        """Record the selection of a round before any mask is written (atomically).

        ``picks``: image index -> (ys, xs) centres; ``shapes``: image index -> (H, W) label shape;
        ``radius``: half-size of the labelled window (0 = pixels); ``info``: JSON-able statistics.
        """
        ids = sorted(int(i) for i in picks)
        lens = [len(picks[i][0]) for i in ids]

        def cat(j: int) -> np.ndarray:
            return np.concatenate([np.asarray(picks[i][j], np.int64) for i in ids]) if ids else np.zeros(0, np.int64)

        payload = dict(
            image=np.repeat(np.asarray(ids, np.int64), lens),
            ys=cat(0),
            xs=cat(1),
            shape_ids=np.asarray(ids, np.int64),
            shapes=np.asarray([tuple(shapes[i]) for i in ids], np.int64).reshape(-1, 2),
            radius=np.int64(radius),
            info=np.frombuffer(json.dumps(info or {}).encode(), dtype=np.uint8),
        )
        atomic_write(self.selection_path(round_idx), lambda f: np.savez(f, **payload))

    def load_selection(self, round_idx: int) -> Optional[dict]:
        """``{"picks": {i: (ys, xs)}, "shapes": {i: (H, W)}, "radius": int, "info": dict}`` or None."""
        p = self.selection_path(round_idx)
        if not p.is_file():
            return None
        with np.load(p) as z:
            image, ys, xs = z["image"], z["ys"], z["xs"]
            ids, starts = np.unique(image, return_index=True)  # ``image`` is sorted
            picks = {int(i): (a, b) for i, a, b in zip(ids, np.split(ys, starts[1:]), np.split(xs, starts[1:]))}
            shapes = {int(i): (int(h), int(w)) for i, (h, w) in zip(z["shape_ids"], z["shapes"])}
            return dict(
                picks=picks,
                shapes=shapes,
                radius=int(z["radius"]),
                info=json.loads(z["info"].tobytes().decode() or "{}"),
            )

    # ------------------------------------------------------------------------------ loader
    def label_filter(self, index: int, label=None):
        """Labels of image ``index`` for training: stored annotations, 255 outside acquired pixels.

        ``label`` (the loader's full label map, numpy or torch, or ``None``) gives the output shape
        and type: the stored map is nearest-resized to its shape. Call it before cropping/flipping.
        Returns all-255 for images without acquired pixels (``None`` if ``label`` is ``None`` too).
        """
        name = self.name_of(index)
        stored = _read_png(self.mask_path(name)) if name is not None else None
        if label is None:
            return stored
        is_torch = False
        try:
            import torch

            is_torch = isinstance(label, torch.Tensor)
        except ImportError:  # pragma: no cover
            pass
        shape = tuple(label.shape[-2:])
        if stored is None:
            out = np.full(shape, IGNORE_INDEX, dtype=np.uint8)
        else:
            out = _resize_nearest(stored, shape)
        if label.ndim == 3:  # (1, H, W)
            out = out[None]
        if is_torch:
            import torch

            return torch.from_numpy(np.ascontiguousarray(out)).to(dtype=label.dtype, device=label.device)
        return out.astype(np.asarray(label).dtype, copy=False)

    def __repr__(self) -> str:
        return f"LabelStore({str(self.root)!r})"
