"""Semantic-segmentation metrics: the dataset-level confusion matrix and what is read from it.

Protocol (docs/datasets.md, "Evaluation protocol"):

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

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from balda.data.labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, VIEW_19, ClassView, get_view

__all__ = ["confusion_matrix", "Metrics"]


# ------------------------------------------------------------------------------ confusion matrix
def confusion_matrix(
    pred: torch.Tensor, label: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
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

    Every value is a **fraction** in [0, 1] (``miou = 0.452``); the tables balda prints
    (:meth:`format_table`, ``balda bench`` summaries, the README) show the same numbers in percent.
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
            raise ValueError(
                f"view {self.view.name!r} needs {max(self.view.class_ids) + 1} classes, "
                f"confusion matrix has {conf.shape[0]}"
            )
        self.confusion = conf
        tp = np.diag(conf)
        gt = conf.sum(axis=1)
        pr = conf.sum(axis=0)
        self.iou = _safe_div(tp, gt + pr - tp)
        self.recall = _safe_div(tp, gt)
        self.precision = _safe_div(tp, pr)

    @classmethod
    def from_confusion(cls, conf: Any, view: ClassView | str | int = VIEW_19, rare_k: int = 6) -> Metrics:
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

    def rare_recall(
        self, class_ids: Optional[Sequence[int]] = None, k: Optional[int] = None, freq: Optional[Sequence[float]] = None
    ) -> float:
        """Mean recall (``nanmean``) over ``class_ids``; by default over ``rarest(k or rare_k, freq)``."""
        if class_ids is None:
            class_ids = self.rarest(self.rare_k if k is None else k, freq)
        ids = np.asarray(list(class_ids), dtype=np.int64)
        return _nanmean(self.recall[ids]) if ids.size else float("nan")

    # ---- the task interface (balda.engine.tasks)
    @property
    def score(self) -> float:
        """The number runs are compared by (``best.pt``): mIoU over the view."""
        return self.miou

    def summary(self) -> dict[str, float]:
        """The scalars logged as ``eval/*``: mIoU, min-class IoU, pixel accuracy, mean recall and
        the mean recall of the ``rare_k`` rarest classes (all fractions)."""
        return {
            "miou": self.miou,
            "min_iou": self.min_iou,
            "acc": self.acc,
            "mean_recall": self.mean_recall,
            "rare_recall": self.rare_recall(),
        }

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
            lines.append(
                f"{(n + mark):<{width}} {pct(self.iou[c]):>6} {pct(self.recall[c]):>7} "
                f"{pct(self.precision[c]):>6} {100.0 * share[c]:6.2f}"
            )
        lines.append("-" * len(head))
        lines.append(
            f"mIoU{self.view.name}: {pct(self.miou).strip()}   min IoU: {pct(self.min_iou).strip()}   "
            f"mean recall: {pct(self.mean_recall).strip()}   pixel acc: {pct(self.acc).strip()}   "
            f"rare-{self.rare_k} recall: {pct(self.rare_recall()).strip()}"
        )
        if len(in_view) < self.num_classes:
            lines.append("* not in the view (not averaged)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format_table()
