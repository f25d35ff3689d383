"""Panoptic quality (Kirillov et al., "Panoptic Segmentation", CVPR 2019), accumulated over a dataset
exactly as the COCO / Cityscapes panoptic evaluation does (``cityscapesscripts``
``evalPanopticSemanticLabeling``); docs/panoptic.md.

Per image, with ground-truth segments ``g`` and predicted segments ``p`` (balda panoptic ids
``trainId * 1000 + k``, :mod:`balda.data.panoptic`; ``k = 0`` of a thing class in the ground truth
is a crowd region; negative = void):

* ``IoU(g, p) = |g & p| / (|p| + |g| - |g & p| - |void & p|)`` (the predicted pixels on void do not
  count in the union); ``g`` and ``p`` of the same class with ``IoU > 0.5`` match (a TP; the match is
  unique); crowd segments never match;
* unmatched non-crowd ``g`` are FNs; an unmatched ``p`` is an FP unless
  ``(|void & p| + |crowd_c & p|) / |p| > 0.5``, ``crowd_c`` the crowd region of ``p``'s class;
* over the dataset, per class ``c``: ``PQ_c = sum_TP IoU / (TP + FP/2 + FN/2)``,
  ``SQ_c = sum_TP IoU / TP`` (0 when ``TP = 0``), ``RQ_c = TP / (TP + FP/2 + FN/2)``, so
  ``PQ = SQ x RQ``; classes with ``TP + FP + FN = 0`` are NaN and left out of the means;
  ``mPQ`` (and mSQ, mRQ) average the view's classes, ``things`` / ``stuff`` its thing / stuff classes.

Classes outside the view (e.g. terrain, truck, train for SYNTHIA-16) are void in the ground truth
and dropped from the prediction, as the official conversion does for its ``ignoreInEval`` classes;
so :class:`PanopticEvaluator` equals ``cityscapes_official_pq`` on the files
:class:`~balda.engine.panoptic_export.CocoPanopticExport` writes for the same view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from balda.data.labels import CLASS_NAMES, NUM_CLASSES, ClassView, get_view
from balda.data.panoptic import LABEL_DIVISOR, THING_TRAINIDS
from balda.engine.panoptic_export import CocoPanopticExport, cityscapes_official_pq, coco_panoptic_segments

__all__ = [
    "pq_stats",
    "PanopticMetrics",
    "PanopticEvaluator",
    "CocoPanopticExport",
    "coco_panoptic_segments",
    "cityscapes_official_pq",
]


def _as_np(x) -> np.ndarray:
    return np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x).astype(np.int64)


def pq_stats(
    pred_ids, gt_ids, view: ClassView | str | int = "19", things=THING_TRAINIDS, num_classes: int = NUM_CLASSES
) -> dict:
    """Per-class ``tp``, ``fp``, ``fn`` (int64 (K,)) and ``iou`` (float64 (K,), the sum of the TP IoUs)
    of one image (module docstring); ``pred_ids`` and ``gt_ids`` are (H, W) panoptic id maps.

    One ``bincount`` over (gt segment, predicted segment) pairs gives every intersection; matching,
    FN and FP are then array operations over the segments.
    """
    v = get_view(view) if isinstance(view, (str, int)) else view
    pred, gt = _as_np(pred_ids), _as_np(gt_ids)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} must be equal (H, W) maps")
    k_cls = num_classes
    in_view = np.zeros(k_cls, dtype=bool)
    in_view[list(v.class_ids)] = True
    is_thing = np.zeros(k_cls, dtype=bool)
    is_thing[[t for t in things if t < k_cls]] = True

    def clean(a):  # void (-1) for negative ids and classes outside the view
        c = a // LABEL_DIVISOR
        ok = (a >= 0) & (c < k_cls)
        ok[ok] = in_view[c[ok]]
        return np.where(ok, a, -1)

    pred, gt = clean(pred), clean(gt)
    gu, ginv = np.unique(gt, return_inverse=True)
    pu, pinv = np.unique(pred, return_inverse=True)
    ng, npr = len(gu), len(pu)
    inter = np.bincount(ginv.ravel() * npr + pinv.ravel(), minlength=ng * npr).reshape(ng, npr)
    g_area, p_area = inter.sum(1), inter.sum(0)
    g_void, p_void = gu < 0, pu < 0
    g_cls = np.where(g_void, 0, gu // LABEL_DIVISOR)
    p_cls = np.where(p_void, 0, pu // LABEL_DIVISOR)
    g_crowd = ~g_void & is_thing[g_cls] & (gu % LABEL_DIVISOR == 0)
    void_p = inter[0] if g_void[0] else np.zeros(npr, dtype=np.int64)  # gu is sorted: void (-1) first

    cand = (~g_void & ~g_crowd)[:, None] & ~p_void[None, :] & (g_cls[:, None] == p_cls[None, :]) & (inter > 0)
    union = p_area[None, :] + g_area[:, None] - inter - void_p[None, :]
    iou = np.where(cand, inter / np.maximum(union, 1), 0.0)
    match = cand & (iou > 0.5)
    gi, pi = np.nonzero(match)
    tp = np.bincount(g_cls[gi], minlength=k_cls)
    iou_sum = np.bincount(g_cls[gi], weights=iou[gi, pi], minlength=k_cls).astype(np.float64)
    fn_mask = ~g_void & ~g_crowd & ~match.any(1)
    fn = np.bincount(g_cls[fn_mask], minlength=k_cls)
    crowd_row = np.full(k_cls, -1, dtype=np.int64)
    crowd_row[g_cls[g_crowd]] = np.nonzero(g_crowd)[0]
    row = crowd_row[p_cls]
    crowd_p = np.where(row >= 0, inter[np.maximum(row, 0), np.arange(npr)], 0)
    ignored = (void_p + crowd_p) / np.maximum(p_area, 1) > 0.5
    fp_mask = ~p_void & ~match.any(0) & ~ignored
    fp = np.bincount(p_cls[fp_mask], minlength=k_cls)
    return {"tp": tp.astype(np.int64), "fp": fp.astype(np.int64), "fn": fn.astype(np.int64), "iou": iou_sum}


def _nanmean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


def _none(x: float) -> Any:
    return None if math.isnan(float(x)) else float(x)


@dataclass
class PanopticMetrics:
    """PQ / SQ / RQ per class (fractions in [0, 1], NaN for absent classes) and their means over a view.

    Built from dataset-level per-class ``tp``, ``fp``, ``fn`` and ``iou`` (sum of TP IoUs), (K,) each.
    """

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    iou: np.ndarray
    view: ClassView | str | int = "19"
    things: tuple[int, ...] = THING_TRAINIDS
    pq: np.ndarray = field(init=False, repr=False)
    sq: np.ndarray = field(init=False, repr=False)
    rq: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.view, (str, int)):
            self.view = get_view(self.view)
        self.tp, self.fp, self.fn = (np.asarray(a, dtype=np.int64) for a in (self.tp, self.fp, self.fn))
        self.iou = np.asarray(self.iou, dtype=np.float64)
        self.things = tuple(self.things)
        den = self.tp + 0.5 * self.fp + 0.5 * self.fn
        present = (self.tp + self.fp + self.fn) > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            self.pq = np.where(present, self.iou / np.where(present, den, 1), np.nan)
            self.rq = np.where(present, self.tp / np.where(present, den, 1), np.nan)
            self.sq = np.where(present, np.where(self.tp > 0, self.iou / np.maximum(self.tp, 1), 0.0), np.nan)

    @property
    def num_classes(self) -> int:
        return len(self.tp)

    def class_ids(self, split: str = "all") -> np.ndarray:
        """The view's classes: ``split`` 'all', 'things' or 'stuff'."""
        ids = list(self.view.class_ids)
        if split == "things":
            ids = [c for c in ids if c in self.things]
        elif split == "stuff":
            ids = [c for c in ids if c not in self.things]
        elif split != "all":
            raise ValueError(f"split must be 'all', 'things' or 'stuff', got {split!r}")
        return np.asarray(ids, dtype=np.int64)

    def mean(self, metric: str = "pq", split: str = "all") -> float:
        """``nanmean`` of ``metric`` ('pq', 'sq', 'rq') over the view's classes of ``split``."""
        return _nanmean(getattr(self, metric)[self.class_ids(split)])

    def count(self, split: str = "all") -> int:
        """Number of classes of ``split`` with ``TP + FP + FN > 0`` (the official ``n``)."""
        return int((~np.isnan(self.pq[self.class_ids(split)])).sum())

    @property
    def mpq(self) -> float:
        return self.mean("pq")

    @property
    def msq(self) -> float:
        return self.mean("sq")

    @property
    def mrq(self) -> float:
        return self.mean("rq")

    # ---- the task interface (balda.engine.tasks)
    @property
    def score(self) -> float:
        """The number runs are compared by (``best.pt``): mPQ over the view."""
        return self.mpq

    def summary(self) -> dict[str, float]:
        """The scalars logged as ``eval/*``: mPQ / mSQ / mRQ and the things / stuff mPQ (fractions)."""
        return {
            "mpq": self.mpq,
            "msq": self.msq,
            "mrq": self.mrq,
            "mpq_things": self.mean("pq", "things"),
            "mpq_stuff": self.mean("pq", "stuff"),
        }

    def _names(self) -> tuple[str, ...]:
        return CLASS_NAMES if self.num_classes == NUM_CLASSES else tuple(f"class_{i}" for i in range(self.num_classes))

    def to_dict(self) -> dict:
        """JSON-friendly summary (fractions, NaN -> None): ``mpq`` etc., ``things`` / ``stuff`` splits, per class."""
        names = self._names()
        out: dict = {"view": self.view.name}
        for split in ("all", "things", "stuff"):
            key = "" if split == "all" else f"_{split}"
            for m in ("pq", "sq", "rq"):
                out[f"m{m}{key}"] = _none(self.mean(m, split))
            out[f"n{key}"] = self.count(split)
        out["per_class"] = {
            names[c]: {
                "train_id": int(c),
                "isthing": c in self.things,
                "pq": _none(self.pq[c]),
                "sq": _none(self.sq[c]),
                "rq": _none(self.rq[c]),
                "tp": int(self.tp[c]),
                "fp": int(self.fp[c]),
                "fn": int(self.fn[c]),
            }
            for c in self.view.class_ids
        }
        return out

    def format_table(self) -> str:
        """Plain-text table of per-class PQ / SQ / RQ (in %) and the All / Things / Stuff means."""

        def pct(x: float) -> str:
            return "  -  " if math.isnan(x) else f"{100.0 * x:5.1f}"

        names = self._names()
        width = max(14, max(len(names[c]) for c in self.view.class_ids) + 2)
        head = f"{'class':<{width}} {'PQ':>6} {'SQ':>6} {'RQ':>6} {'TP':>6} {'FP':>6} {'FN':>6}"
        lines = [head, "-" * len(head)]
        for c in self.view.class_ids:
            mark = " (thing)" if c in self.things else ""
            lines.append(
                f"{names[c]:<{width}} {pct(self.pq[c]):>6} {pct(self.sq[c]):>6} {pct(self.rq[c]):>6} "
                f"{int(self.tp[c]):>6} {int(self.fp[c]):>6} {int(self.fn[c]):>6}{mark}"
            )
        lines.append("-" * len(head))
        for split, label in (("all", f"mPQ{self.view.name}"), ("things", "Things"), ("stuff", "Stuff")):
            lines.append(
                f"{label:<{width}} {pct(self.mean('pq', split)):>6} {pct(self.mean('sq', split)):>6} "
                f"{pct(self.mean('rq', split)):>6}   n={self.count(split)}"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format_table()


class PanopticEvaluator:
    """Accumulates :func:`pq_stats` over a dataset; :meth:`metrics` gives :class:`PanopticMetrics`."""

    def __init__(self, view: ClassView | str | int = "19", things=THING_TRAINIDS, num_classes: int = NUM_CLASSES):
        self.view = get_view(view) if isinstance(view, (str, int)) else view
        self.things = tuple(things)
        self.num_classes = int(num_classes)
        self.reset()

    def reset(self) -> None:
        k = self.num_classes
        self.tp = np.zeros(k, dtype=np.int64)
        self.fp = np.zeros(k, dtype=np.int64)
        self.fn = np.zeros(k, dtype=np.int64)
        self.iou = np.zeros(k, dtype=np.float64)
        self.num_images = 0

    def add(self, pred_ids, gt_ids) -> dict:
        """Add one image ((H, W) id maps) or a batch ((B, H, W)); returns the stats of the last image."""
        pred, gt = _as_np(pred_ids), _as_np(gt_ids)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
        if pred.ndim == 2:
            pred, gt = pred[None], gt[None]
        s: dict = {}
        for p, g in zip(pred, gt):
            s = pq_stats(p, g, self.view, self.things, self.num_classes)
            self.tp += s["tp"]
            self.fp += s["fp"]
            self.fn += s["fn"]
            self.iou += s["iou"]
            self.num_images += 1
        return s

    def metrics(self) -> PanopticMetrics:
        return PanopticMetrics(self.tp, self.fp, self.fn, self.iou, view=self.view, things=self.things)
