"""Using a trained run: evaluate it again, or segment your own images and videos.

* :func:`load_run` - the segmentor and config of a run folder, a checkpoint or an exported weights
  file (``balda export``), built from the config saved with it;
* :func:`evaluate_run` - ``balda eval``: the run's validation protocol (or overrides of it);
* :func:`predict` - ``balda predict``: image files, folders (recursively), globs and video files
  (frame by frame through OpenCV), with the run's inference mode (whole image at ``eval.size``, or
  sliding windows ``eval.crop`` / ``eval.stride``), written as colour PNGs, trainId PNGs, Cityscapes
  labelId PNGs and/or overlays on the input.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from balda.config import Config, config_from_dict, merge_dicts, parse_overrides, to_dict
from balda.core.checkpoint import load_checkpoint, load_model_weights, resolve_checkpoint
from balda.core.errors import CheckpointError, ConfigError, DataError
from balda.core.progress import progress_bar
from balda.data.io import read_image
from balda.data.labels import TRAINID_TO_LABELID_LUT, colorize
from balda.models import build_model
from balda.models.inference import normalize_images, predict_logits

log = logging.getLogger("balda.predict")

__all__ = ["IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "FORMATS", "load_run", "evaluate_run", "predict", "Prediction"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
#: Output kinds of :func:`predict`: Cityscapes-palette colours, raw trainIds (0..18, 255 = none),
#: Cityscapes labelIds (what the official tools read), the colours blended over the input.
FORMATS = ("color", "trainid", "labelid", "overlay")


def load_run(
    run: str | Path,
    best: bool = False,
    teacher: bool = False,
    overrides: Sequence[str] = (),
    device: str | torch.device = "cpu",
) -> tuple[torch.nn.Module, Config, Path]:
    """``(model in eval mode on device, config, checkpoint path)`` of a run folder (``final.pt``, or
    ``best.pt`` with ``best``; ``last.pt`` while it trains), a checkpoint or an exported weights file.
    ``teacher``: the EMA teacher stored in the checkpoint instead of the student. ``overrides``:
    dotted ``key=value`` changes of the saved config (``eval.mode=slide``, ``data.val.root=...``)."""
    path = resolve_checkpoint(run, best=best)
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt.get("config"), dict):
        raise CheckpointError(f"{path} holds no saved config; it was not written by balda train or balda export")
    cfg = config_from_dict(ckpt["config"], str(path))
    if overrides:
        cfg = config_from_dict(merge_dicts(to_dict(cfg), parse_overrides(list(overrides))), "command-line overrides")
    model = build_model(replace(cfg.model, pretrained=None, init=None))
    state = ckpt["model"]
    if teacher:
        sub = {k[len("teacher.") :]: v for k, v in (ckpt.get("strategy") or {}).items() if k.startswith("teacher.")}
        if not sub:
            raise CheckpointError(f"{path} holds no EMA teacher (its strategy has none); drop --teacher")
        state = sub
    load_model_weights(model, state, path)
    return model.to(device).eval(), cfg, path


def evaluate_run(
    run: str | Path,
    overrides: Sequence[str] = (),
    best: bool = False,
    teacher: bool = False,
    export_dir: Optional[str | Path] = None,
    progress: bool = True,
    device: Optional[str] = None,
):
    """Evaluate a run on its validation split with its saved protocol (see :func:`load_run`); returns
    :class:`~balda.engine.metrics.Metrics` (``miou`` etc. are fractions; tables print percent)."""
    from balda.data.datasets import build_dataset
    from balda.engine.evaluation import evaluate
    from balda.engine.trainer import resolve_device

    model, cfg, _ = load_run(run, best=best, teacher=teacher, overrides=overrides)
    dev = resolve_device(device or cfg.train.device)
    return evaluate(
        model.to(dev),
        build_dataset(cfg.data.val),
        cfg.eval,
        cfg.data.mean,
        cfg.data.std,
        device=dev,
        export_dir=Path(export_dir) if export_dir else None,
        progress=progress,
        num_classes=cfg.model.num_classes,
    )


# ------------------------------------------------------------------------------------------ inputs
@dataclass(frozen=True)
class _Item:
    """One input: an image file, or a video file (all its frames); ``name`` = output stem."""

    path: Path
    name: str
    video: bool = False


def _expand(inputs: Sequence[str | Path]) -> list[_Item]:
    """Files, folders (recursively, images and videos) and globs -> items with distinct output names
    (the path relative to the folder or glob root, suffix dropped)."""
    items: list[_Item] = []
    for inp in inputs:
        p = Path(inp)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES)
            if not files:
                raise DataError(f"input folder {p} holds no image or video file ({', '.join(IMAGE_SUFFIXES)}, ...)", p)
            items += [
                _Item(f, str(f.relative_to(p).with_suffix("")), f.suffix.lower() in VIDEO_SUFFIXES) for f in files
            ]
        elif p.is_file():
            items.append(_Item(p, p.stem, p.suffix.lower() in VIDEO_SUFFIXES))
        elif any(ch in str(inp) for ch in "*?["):
            files = sorted(Path(f) for f in glob.glob(str(inp), recursive=True) if Path(f).is_file())
            if not files:
                raise DataError(f"input pattern {inp!r} matches no file")
            items += [_Item(f, f.stem, f.suffix.lower() in VIDEO_SUFFIXES) for f in files]
        else:
            raise DataError(f"input not found: {p}", p)
    seen: dict[str, int] = {}
    out = []
    for it in items:  # two inputs named alike (a/x.png, b/x.png given as files) get distinct outputs
        n = seen.get(it.name, 0)
        seen[it.name] = n + 1
        out.append(it if n == 0 else _Item(it.path, f"{it.name}_{n}", it.video))
    return out


def _frames(item: _Item) -> Iterator[tuple[str, np.ndarray]]:
    """``(output name, RGB uint8 frame)`` of an item: the image, or each frame of the video."""
    if not item.video:
        yield item.name, read_image(item.path)
        return
    import cv2

    cap = cv2.VideoCapture(str(item.path))
    if not cap.isOpened():
        raise DataError(f"cannot open video {item.path} (OpenCV could not decode it)", item.path)
    try:
        k = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            yield f"{item.name}/frame_{k:06d}", cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            k += 1
        if k == 0:
            raise DataError(f"video {item.path} has no readable frame", item.path)
    finally:
        cap.release()


def _count(item: _Item) -> int:
    if not item.video:
        return 1
    import cv2

    cap = cv2.VideoCapture(str(item.path))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
    cap.release()
    return max(n, 1)


# ----------------------------------------------------------------------------------------- predict
@dataclass
class Prediction:
    """One segmented image or frame: its output name, the (H, W) trainId map and the files written."""

    name: str
    source: Path
    trainids: np.ndarray
    files: list[Path]


def _write(
    pred: np.ndarray, image: np.ndarray, out: Path, name: str, formats: Sequence[str], alpha: float
) -> list[Path]:
    from PIL import Image

    written = []
    for fmt in formats:
        if fmt == "color":
            arr = colorize(pred)
        elif fmt == "trainid":
            arr = pred.astype(np.uint8)
        elif fmt == "labelid":
            arr = TRAINID_TO_LABELID_LUT[pred]
        else:  # overlay
            col = colorize(pred).astype(np.float32)
            arr = np.clip((1 - alpha) * image.astype(np.float32) + alpha * col, 0, 255).astype(np.uint8)
        path = out / f"{name}_{fmt}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(path)
        written.append(path)
    return written


def predict(
    run: str | Path,
    inputs: Sequence[str | Path],
    out: Optional[str | Path] = None,
    *,
    formats: Sequence[str] = ("color",),
    overlay: bool = False,
    alpha: float = 0.5,
    best: bool = False,
    teacher: bool = False,
    overrides: Sequence[str] = (),
    on_error: str = "raise",
    progress: bool = True,
    device: Optional[str] = None,
    keep: bool = True,
) -> list[Prediction]:
    """Segment ``inputs`` (files, folders, globs, videos) with the run's model and inference protocol.

    Writes ``<out>/<name>_<format>.png`` for each format (``color``, ``trainid``, ``labelid``;
    ``overlay=True`` adds ``overlay``, the colours blended at ``alpha`` over the input); video frames
    go to ``<out>/<video>/frame_NNNNNN_<format>.png``. With ``out=None`` nothing is written. Returns
    one :class:`Prediction` per image or frame (``keep=False`` drops the maps to save memory).
    ``on_error='skip'`` logs and skips unreadable inputs instead of raising :class:`DataError`.
    """
    from balda.engine.trainer import resolve_device

    if on_error not in ("raise", "skip"):
        raise ConfigError(f"--on-error: {on_error!r} is not one of ['raise', 'skip']")
    formats = list(dict.fromkeys([*formats, *(["overlay"] if overlay else [])]))
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ConfigError(f"--format: unknown output format(s) {bad}; choose from {list(FORMATS)}")
    model, cfg, _ = load_run(run, best=best, teacher=teacher, overrides=overrides)
    dev = resolve_device(device or cfg.train.device)
    model.to(dev)
    items = _expand(inputs)
    out_dir = Path(out) if out is not None else None
    results: list[Prediction] = []
    skipped = 0
    ev = cfg.eval
    with torch.inference_mode(), progress_bar("Predicting", sum(_count(i) for i in items), progress) as bar:
        for item in items:
            try:
                for name, image in _frames(item):
                    x = normalize_images(image, cfg.data.mean, cfg.data.std, dev)
                    logits = predict_logits(
                        model,
                        x,
                        image.shape[:2],
                        ev.mode,
                        size=ev.size,
                        crop=ev.crop,
                        stride=ev.stride,
                        num_classes=cfg.model.num_classes,
                    )
                    pred = logits.argmax(1)[0].to(torch.uint8).cpu().numpy()
                    files = _write(pred, image, out_dir, name, formats, alpha) if out_dir is not None else []
                    results.append(Prediction(name, item.path, pred if keep else np.zeros((0, 0), np.uint8), files))
                    bar.advance()
            except DataError as e:
                if on_error == "raise":
                    raise
                skipped += 1
                log.warning("skipping %s: %s", item.path, e)
                bar.advance()
    if skipped:
        log.warning("%d of %d inputs could not be read and were skipped", skipped, len(items))
    return results
