"""Semantic-segmentation evaluation: confusion matrix, metrics, inference and prediction export.

Protocol (specs/datasets.md, "Evaluation protocol"):

* one confusion matrix ``C`` (K x K, rows = ground truth, columns = prediction) is accumulated over
  the whole split; pixels whose label is ``ignore_index`` (255) are skipped;
* with ``TP_c = C[c, c]``, ``FN_c = sum_j C[c, j] - TP_c`` and ``FP_c = sum_i C[i, c] - TP_c``:

  - ``IoU_c       = TP_c / (TP_c + FP_c + FN_c)``  (NaN when class c is absent from GT and prediction)
  - ``recall_c    = TP_c / (TP_c + FN_c)``         (NaN when class c is absent from GT; mmseg "Acc")
  - ``precision_c = TP_c / (TP_c + FP_c)``         (NaN when class c is never predicted)
  - ``mIoU        = nanmean_{c in view} IoU_c``; ``min IoU = nanmin_{c in view} IoU_c``
  - ``acc         = sum_c TP_c / sum_ij C_ij``     (pixel accuracy over all non-ignored pixels)

* an evaluation *view* (19 / SYNTHIA-16 / SYNTHIA-13) only selects which classes are averaged;
  IoUs are always computed from the full K x K matrix and classes are never renumbered;
* labels are compared at full label resolution; logits are upsampled bilinearly
  (``align_corners=False``). Inference is ``whole`` (optionally resized) or ``slide`` (crop, stride).

Predictions can be exported as Cityscapes ``labelIds`` PNGs (``<export_dir>/labelIds/<name>_pred.png``)
that the official ``cityscapesscripts`` pixel-level evaluation matches to
``<city>_<seq>_<frame>_gtFine_labelIds.png``; :func:`cityscapes_official_eval` runs it.
The official score averages the IoUs of its 19 evaluated (non-``ignoreInEval``) classes that are not
NaN, which is exactly ``nanmean`` over the 19-class view here.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from balda.core.progress import progress_bar
from balda.data.labels import (
    CLASS_NAMES,
    IGNORE_INDEX,
    NUM_CLASSES,
    TRAINID_TO_LABELID_LUT,
    VIEW_19,
    ClassView,
    colorize,
    get_view,
)

__all__ = [
    "confusion_matrix",
    "Metrics",
    "predict_whole",
    "predict_slide",
    "slide_windows",
    "evaluate",
    "export_prediction",
    "cityscapes_official_eval",
]


# ------------------------------------------------------------------------------ confusion matrix
def confusion_matrix(pred: torch.Tensor, label: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Confusion matrix ``C[gt, pred]`` (LongTensor K x K) on the tensors' device.

    One ``bincount`` of ``K * gt + pred`` over the valid pixels. A pixel is valid when its label lies
    in ``[0, K)`` (so ``ignore_index`` and any other out-of-range id are skipped) and its prediction
    lies in ``[0, K)`` (argmax predictions always do).
    """
    if pred.shape != label.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and label {tuple(label.shape)} differ in shape")
    k = int(num_classes)
    p = pred.reshape(-1).long()
    g = label.reshape(-1).long()
    valid = (g >= 0) & (g < k) & (g != ignore_index) & (p >= 0) & (p < k)
    idx = g[valid] * k + p[valid]
    return torch.bincount(idx, minlength=k * k).reshape(k, k)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = num.astype(np.float64)
    den = den.astype(np.float64)
    out = np.full(num.shape, np.nan, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _nan_to_none(x: float) -> Optional[float]:
    x = float(x)
    return None if math.isnan(x) else x


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


def _nanmin(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    x = x[~np.isnan(x)]
    return float(x.min()) if x.size else float("nan")


def _class_names(k: int) -> tuple[str, ...]:
    return CLASS_NAMES if k == NUM_CLASSES else tuple(f"class_{i}" for i in range(k))


# ------------------------------------------------------------------------------------- metrics
@dataclass
class Metrics:
    """Segmentation metrics derived from one dataset-level confusion matrix.

    ``iou``, ``recall`` and ``precision`` are (K,) float arrays over *all* K classes (NaN where
    undefined, see the module docstring); the scalar summaries average over ``view.class_ids``.
    """

    confusion: np.ndarray
    view: ClassView = VIEW_19
    #: Number of rarest classes whose mean recall ``to_dict`` reports as ``rare_recall``.
    rare_k: int = 6
    iou: np.ndarray = field(init=False, repr=False)
    recall: np.ndarray = field(init=False, repr=False)
    precision: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        conf = self.confusion
        if isinstance(conf, torch.Tensor):
            conf = conf.detach().cpu().numpy()
        conf = np.asarray(conf, dtype=np.int64)
        if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
            raise ValueError(f"confusion matrix must be square, got shape {conf.shape}")
        if isinstance(self.view, (str, int)):
            self.view = get_view(self.view)
        if max(self.view.class_ids) >= conf.shape[0]:
            raise ValueError(f"view {self.view.name!r} needs {max(self.view.class_ids) + 1} classes, "
                             f"confusion matrix has {conf.shape[0]}")
        self.confusion = conf
        tp = np.diag(conf)
        gt = conf.sum(axis=1)
        pr = conf.sum(axis=0)
        self.iou = _safe_div(tp, gt + pr - tp)
        self.recall = _safe_div(tp, gt)
        self.precision = _safe_div(tp, pr)

    @classmethod
    def from_confusion(cls, conf: Any, view: ClassView | str | int = VIEW_19, rare_k: int = 6) -> "Metrics":
        """Build metrics from a (K, K) confusion matrix (numpy array or tensor, rows = GT)."""
        return cls(confusion=conf, view=view, rare_k=rare_k)

    # ---- summaries over the view
    @property
    def num_classes(self) -> int:
        return int(self.confusion.shape[0])

    @property
    def class_names(self) -> tuple[str, ...]:
        return _class_names(self.num_classes)

    @property
    def _ids(self) -> np.ndarray:
        return np.asarray(self.view.class_ids, dtype=np.int64)

    @property
    def miou(self) -> float:
        """``nanmean`` of IoU over the view's classes."""
        return _nanmean(self.iou[self._ids])

    @property
    def min_iou(self) -> float:
        """``nanmin`` of IoU over the view's classes."""
        return _nanmin(self.iou[self._ids])

    @property
    def acc(self) -> float:
        """Overall pixel accuracy ``trace(C) / sum(C)`` over non-ignored pixels."""
        total = self.confusion.sum()
        return float(np.trace(self.confusion) / total) if total > 0 else float("nan")

    @property
    def mean_recall(self) -> float:
        """``nanmean`` of recall over the view's classes (mmseg ``mAcc``)."""
        return _nanmean(self.recall[self._ids])

    @property
    def gt_share(self) -> np.ndarray:
        """Share of the non-ignored GT pixels of each class (K,)."""
        gt = self.confusion.sum(axis=1)
        total = gt.sum()
        return gt / total if total > 0 else np.zeros(len(gt), dtype=np.float64)

    def rarest(self, k: int, freq: Optional[Sequence[float]] = None) -> tuple[int, ...]:
        """The ``k`` classes of the view with the smallest pixel share, rarest first.

        ``freq`` (K,) gives the shares to rank by (e.g. a target class prior); by default the GT pixel
        share in this confusion matrix is used, and classes absent from the GT are skipped (their
        recall is undefined).
        """
        ids = self._ids
        if freq is None:
            share = self.gt_share
            ids = ids[self.confusion.sum(axis=1)[ids] > 0]
        else:
            share = np.asarray(freq, dtype=np.float64)
            if share.shape != (self.num_classes,):
                raise ValueError(f"freq must have shape ({self.num_classes},), got {share.shape}")
        order = np.argsort(share[ids], kind="stable")
        return tuple(int(c) for c in ids[order][: max(int(k), 0)])

    def rare_recall(self, class_ids: Optional[Sequence[int]] = None, k: Optional[int] = None,
                    freq: Optional[Sequence[float]] = None) -> float:
        """Mean recall (``nanmean``) over ``class_ids``; by default over ``rarest(k or rare_k, freq)``."""
        if class_ids is None:
            class_ids = self.rarest(self.rare_k if k is None else k, freq)
        ids = np.asarray(list(class_ids), dtype=np.int64)
        return _nanmean(self.recall[ids]) if ids.size else float("nan")

    # ---- export
    def to_dict(self) -> dict:
        """JSON-friendly summary (fractions in [0, 1], NaN -> None) with per-class dicts by name."""
        names = self.class_names
        gt = self.confusion.sum(axis=1)
        pr = self.confusion.sum(axis=0)
        in_view = set(self.view.class_ids)
        rare = self.rarest(self.rare_k)
        per_class = {
            names[c]: {
                "train_id": c,
                "iou": _nan_to_none(self.iou[c]),
                "recall": _nan_to_none(self.recall[c]),
                "precision": _nan_to_none(self.precision[c]),
                "gt_pixels": int(gt[c]),
                "pred_pixels": int(pr[c]),
                "in_view": c in in_view,
            }
            for c in range(self.num_classes)
        }
        return {
            "view": self.view.name,
            "miou": _nan_to_none(self.miou),
            "min_iou": _nan_to_none(self.min_iou),
            "acc": _nan_to_none(self.acc),
            "mean_recall": _nan_to_none(self.mean_recall),
            "rare_k": int(self.rare_k),
            "rare_classes": [names[c] for c in rare],
            "rare_recall": _nan_to_none(self.rare_recall(rare)),
            "num_pixels": int(self.confusion.sum()),
            "per_class": per_class,
            "confusion": self.confusion.tolist(),
        }

    def format_table(self) -> str:
        """Plain-text table of per-class IoU / recall / precision (in %) and the view summaries.

        Classes outside the view are marked with ``*`` and excluded from the averages.
        """
        def pct(x: float) -> str:
            return "  -  " if math.isnan(x) else f"{100.0 * x:5.1f}"

        names = self.class_names
        width = max(14, max(len(n) for n in names) + 2)
        in_view = set(self.view.class_ids)
        share = self.gt_share
        head = f"{'class':<{width}} {'IoU':>6} {'Recall':>7} {'Prec.':>6} {'GT %':>6}"
        lines = [head, "-" * len(head)]
        for c, n in enumerate(names):
            mark = "" if c in in_view else "*"
            lines.append(f"{(n + mark):<{width}} {pct(self.iou[c]):>6} {pct(self.recall[c]):>7} "
                         f"{pct(self.precision[c]):>6} {100.0 * share[c]:6.2f}")
        lines.append("-" * len(head))
        lines.append(f"mIoU{self.view.name}: {pct(self.miou).strip()}   min IoU: {pct(self.min_iou).strip()}   "
                     f"mean recall: {pct(self.mean_recall).strip()}   pixel acc: {pct(self.acc).strip()}   "
                     f"rare-{self.rare_k} recall: {pct(self.rare_recall()).strip()}")
        if len(in_view) < self.num_classes:
            lines.append("* not in the view (not averaged)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format_table()


# ------------------------------------------------------------------------------------ inference
def _logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    out = model(images)
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)):  # plain (features, logits)
        return out[-1]
    raise TypeError(f"model returned {type(out).__name__}; expected SegOutput or a tensor")


def _pair(x: Sequence[int] | int) -> tuple[int, int]:
    if isinstance(x, int):
        return x, x
    a, b = x
    return int(a), int(b)


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    size = _pair(size)
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def predict_whole(model: nn.Module, images: torch.Tensor, out_size: Sequence[int],
                  size: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Whole-image inference: logits (B, K, *out_size).

    ``images`` (B, 3, H, W) are normalised; when ``size`` is given they are first resized to it
    (bilinear); the model's logits are upsampled bilinearly (align_corners=False) to ``out_size``.
    """
    x = _resize(images, size) if size is not None else images
    return _resize(_logits(model, x), out_size)


def slide_windows(height: int, width: int, crop: Sequence[int] | int,
                  stride: Sequence[int] | int) -> list[tuple[int, int, int, int]]:
    """Sliding windows ``(y1, y2, x1, x2)`` over an image of at least ``crop`` size.

    ``n_y = max(ceil((H - ch) / sh), 0) + 1`` rows of windows starting at ``min(i * sh, H - ch)``
    (the last window is clamped to the border), likewise for columns; together they cover every
    pixel. Dimensions smaller than the crop give a single window of the image's size; a stride larger
    than the crop would leave gaps and is reduced to the crop.
    """
    ch, cw = _pair(crop)
    sh, sw = _pair(stride)
    if sh <= 0 or sw <= 0:
        raise ValueError(f"stride must be positive, got {(sh, sw)}")
    ch, cw = min(ch, height), min(cw, width)
    sh, sw = min(sh, ch), min(sw, cw)
    ny = max(math.ceil((height - ch) / sh), 0) + 1
    nx = max(math.ceil((width - cw) / sw), 0) + 1
    wins = []
    for i in range(ny):
        y1 = min(i * sh, height - ch)
        for j in range(nx):
            x1 = min(j * sw, width - cw)
            wins.append((y1, y1 + ch, x1, x1 + cw))
    return wins


def predict_slide(model: nn.Module, images: torch.Tensor, out_size: Sequence[int],
                  crop: Sequence[int] | int, stride: Sequence[int] | int, num_classes: int,
                  size: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Sliding-window inference: logits (B, K, *out_size).

    The (optionally ``size``-resized) image is zero-padded at the bottom/right up to ``crop`` when
    smaller; each window's logits are upsampled to the window size and summed, then divided by the
    number of windows covering each pixel (``count``); the padding is cropped off and the result is
    upsampled bilinearly to ``out_size``.
    """
    x = _resize(images, size) if size is not None else images
    b, _, h, w = x.shape
    ch, cw = _pair(crop)
    pad_h, pad_w = max(ch - h, 0), max(cw - w, 0)
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))
    hp, wp = x.shape[-2:]
    acc = x.new_zeros((b, num_classes, hp, wp), dtype=torch.float32)
    count = x.new_zeros((1, 1, hp, wp), dtype=torch.float32)
    for y1, y2, x1, x2 in slide_windows(hp, wp, (ch, cw), stride):
        logits = _logits(model, x[:, :, y1:y2, x1:x2])
        if logits.shape[1] != num_classes:
            raise ValueError(f"model gave {logits.shape[1]} classes, expected num_classes={num_classes}")
        acc[:, :, y1:y2, x1:x2] += _resize(logits.float(), (y2 - y1, x2 - x1))
        count[:, :, y1:y2, x1:x2] += 1
    acc = (acc / count)[:, :, :h, :w]
    return _resize(acc, out_size)


# --------------------------------------------------------------------------------------- export
def export_prediction(pred: np.ndarray, name: str, export_dir: str | Path) -> tuple[Path, Path]:
    """Write one (H, W) trainId prediction as Cityscapes labelIds and colour PNGs.

    Files: ``<export_dir>/labelIds/<name>_pred.png`` (trainId -> labelId through
    ``TRAINID_TO_LABELID_LUT``; 255 -> 0 "unlabeled") and ``<export_dir>/color/<name>_pred_color.png``.
    For a Cityscapes stem ``<city>_<seq>_<frame>`` the labelIds file matches the official
    evaluation's pattern ``<city>_<seq>_<frame>*.png``; point it at the ``labelIds`` folder only.
    """
    from PIL import Image

    pred = np.asarray(pred)
    if pred.ndim != 2:
        raise ValueError(f"prediction must be (H, W), got shape {pred.shape}")
    pred = pred.astype(np.uint8)
    root = Path(export_dir)
    lab_path = root / "labelIds" / f"{name}_pred.png"
    col_path = root / "color" / f"{name}_pred_color.png"
    lab_path.parent.mkdir(parents=True, exist_ok=True)
    col_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(TRAINID_TO_LABELID_LUT[pred]).save(lab_path)
    Image.fromarray(colorize(pred)).save(col_path)
    return lab_path, col_path


# ------------------------------------------------------------------------------------- evaluate
def _batches(n: int, batch_size: int, load) -> Any:
    """Yield lists of (index, image, label) of at most ``batch_size`` items with equal image and
    label shapes (a shape change flushes the batch)."""
    batch: list = []
    for i in range(n):
        image, label = load(i)
        if batch and (batch[0][1].shape != image.shape or batch[0][2].shape != label.shape):
            yield batch
            batch = []
        batch.append((i, image, label))
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def evaluate(model: nn.Module, dataset: Any, eval_cfg: Any, mean: Sequence[float], std: Sequence[float],
             device: str | torch.device = "cpu", export_dir: Optional[str | Path] = None,
             progress: bool = True, num_classes: int = NUM_CLASSES) -> Metrics:
    """Evaluate ``model`` on ``dataset`` and return :class:`Metrics` over ``eval_cfg.view``.

    ``dataset``: ``len(dataset)``, ``dataset.load(i) -> (uint8 HxWx3 RGB image, uint8 HxW trainIds)``
    and ``dataset.names[i]`` (a stem). Images are normalised with ``mean``/``std`` (0-255 units),
    predicted with ``eval_cfg.mode`` (``whole`` at ``eval_cfg.size``, or ``slide`` with
    ``eval_cfg.crop``/``eval_cfg.stride``, after resizing to ``eval_cfg.size`` if set), upsampled to
    the label's full resolution, and one confusion matrix is accumulated on ``device``.
    ``eval_cfg.max_images`` limits the number of images. The model runs in eval mode under
    ``torch.inference_mode`` and its previous train/eval mode is restored afterwards.

    With ``export_dir``: predictions are written by :func:`export_prediction` and the metrics to
    ``<export_dir>/metrics.json``.
    """
    device = torch.device(device)
    view = get_view(eval_cfg.view)
    n = len(dataset)
    if eval_cfg.max_images is not None:
        n = min(n, int(eval_cfg.max_images))
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    conf = torch.zeros((num_classes, num_classes), dtype=torch.long, device=device)
    batch_size = max(int(getattr(eval_cfg, "batch_size", 1) or 1), 1)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), progress_bar("Evaluating", n, progress) as bar:
            for batch in _batches(n, batch_size, dataset.load):
                imgs = torch.from_numpy(np.stack([np.ascontiguousarray(b[1]) for b in batch]))
                labels = torch.from_numpy(np.stack([np.asarray(b[2]) for b in batch]))
                x = imgs.to(device, non_blocking=True).permute(0, 3, 1, 2).float()
                x = (x - mean_t) / std_t
                y = labels.to(device, non_blocking=True).long()
                out_size = tuple(y.shape[-2:])
                if eval_cfg.mode == "slide":
                    logits = predict_slide(model, x, out_size, eval_cfg.crop, eval_cfg.stride,
                                           num_classes, size=eval_cfg.size)
                elif eval_cfg.mode == "whole":
                    logits = predict_whole(model, x, out_size, size=eval_cfg.size)
                else:
                    raise ValueError(f"unknown eval mode {eval_cfg.mode!r}")
                pred = logits.argmax(dim=1)
                conf += confusion_matrix(pred, y, num_classes)
                if export_dir is not None:
                    pred_np = pred.to(torch.uint8).cpu().numpy()
                    for (i, _, _), p in zip(batch, pred_np):
                        export_prediction(p, str(dataset.names[i]), export_dir)
                bar.advance(len(batch))
    finally:
        model.train(was_training)

    metrics = Metrics.from_confusion(conf.cpu().numpy(), view, rare_k=int(getattr(eval_cfg, "rare_k", 6)))
    if export_dir is not None:
        out = Path(export_dir)
        out.mkdir(parents=True, exist_ok=True)
        d = metrics.to_dict()
        d["num_images"] = n
        (out / "metrics.json").write_text(json.dumps(d, indent=2))
    return metrics


# ---------------------------------------------------------------------- official Cityscapes check
def cityscapes_official_eval(pred_dir: str | Path, gt_search: str | Path,
                             json_path: Optional[str | Path] = None, quiet: bool = True) -> dict:
    """Score exported labelIds PNGs with the official ``cityscapesscripts`` pixel-level evaluation.

    ``pred_dir`` is the ``labelIds`` folder written by :func:`export_prediction`; ``gt_search`` a glob
    such as ``<cityscapes>/gtFine/val/*/*_gtFine_labelIds.png``. Instance-level scores and its pixel
    accuracy are switched off (they need ``_instanceIds`` files). Returns the official result dict;
    ``["averageScoreClasses"]`` is its mIoU (mean of the non-NaN IoUs of its 19 evaluated classes).
    Needs the optional ``cityscapesscripts`` package.
    """
    import copy
    import glob

    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs_eval

    args = copy.copy(cs_eval.args)
    args.groundTruthSearch = str(gt_search)
    args.predictionPath = str(pred_dir)
    args.predictionWalk = None
    args.evalInstLevelScore = False
    args.evalPixelAccuracy = False
    args.quiet = quiet
    args.colorized = False
    args.bold = args.nocol = ""
    args.JSONOutput = json_path is not None
    if json_path is not None:
        args.exportFile = str(json_path)
    gts = sorted(glob.glob(args.groundTruthSearch))
    if not gts:
        raise FileNotFoundError(f"no ground truth matches {args.groundTruthSearch}")
    preds = [cs_eval.getPrediction(args, gt) for gt in gts]
    return cs_eval.evaluateImgLists(preds, gts, args)
