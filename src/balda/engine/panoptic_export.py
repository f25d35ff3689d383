"""Exporting panoptic predictions and ground truth in the COCO panoptic format that the official
``cityscapesscripts`` panoptic evaluation (``evaluation/evalPanopticSemanticLabeling.py``) reads, and
scoring them with it.

Format (Kirillov et al., "Panoptic Segmentation", CVPR 2019; COCO panoptic; what
``preparation/createPanopticImgs.py`` writes for Cityscapes):

* one RGB PNG per image whose pixel segment id is ``R + 256 G + 256^2 B`` (0 = void);
* a JSON file ``{"images", "annotations", "categories"}``; each annotation has ``image_id``,
  ``file_name`` and ``segments_info`` = ``[{"id", "category_id", "area", "bbox", "iscrowd"}]``;
  categories are Cityscapes **labelIds** with ``isthing``.

Segment ids follow Cityscapes: ``labelId * 1000 + k`` for thing instance ``k >= 1`` and ``labelId``
for a stuff segment or a crowd region (``iscrowd = 1`` when its class is a thing). balda's panoptic
ids (``trainId * 1000 + k``, :mod:`balda.data.panoptic`) map one-to-one onto these. Classes outside
the evaluation view are written as void and left out of ``categories``, exactly as the official
conversion drops its ``ignoreInEval`` classes; :class:`~balda.engine.panoptic_metrics.PanopticEvaluator`
does the same, so both evaluate the same segments.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np

from balda.core.atomic import atomic_write_text
from balda.data.io import write_image
from balda.data.labels import CLASS_NAMES, PALETTE, TRAINID_TO_LABELID, ClassView, get_view
from balda.data.panoptic import LABEL_DIVISOR, THING_TRAINIDS

__all__ = ["coco_panoptic_segments", "id_to_rgb", "CocoPanopticExport", "cityscapes_official_pq"]


def id_to_rgb(seg_id: np.ndarray) -> np.ndarray:
    """(H, W) segment ids -> (H, W, 3) uint8 with ``id = R + 256 G + 256^2 B`` (COCO ``id2rgb``)."""
    s = np.asarray(seg_id, dtype=np.int64)
    return np.stack([s % 256, (s // 256) % 256, (s // 65536) % 256], axis=-1).astype(np.uint8)


def _view(view) -> ClassView:
    return get_view(view) if isinstance(view, (str, int)) else view


def coco_panoptic_segments(
    ids, view: ClassView | str | int = "19", things=THING_TRAINIDS, crowd: bool = True
) -> tuple[np.ndarray, list[dict]]:
    """Cityscapes/COCO segment ids and ``segments_info`` of one balda panoptic id map.

    ``ids`` (H, W) int: ``trainId * 1000 + k`` (negative = void). Pixels that are void or whose
    class is outside ``view`` get segment id 0. Returns ``(seg_ids (H, W) int64, segments_info)``
    with, per segment, ``area`` (pixel count), ``bbox`` ``[x, y, width, height]`` and ``iscrowd``
    (1 for a thing class with ``k = 0`` when ``crowd``, i.e. for ground truth; 0 otherwise).
    """
    v = _view(view)
    a = np.asarray(ids.detach().cpu().numpy() if hasattr(ids, "detach") else ids).astype(np.int64)
    if a.ndim != 2:
        raise ValueError(f"panoptic id map must be (H, W), got shape {a.shape}")
    cls = np.where(a >= 0, a // LABEL_DIVISOR, -1)
    k = np.where(a >= 0, a % LABEL_DIVISOR, 0)
    in_view = np.zeros(256 + 1, dtype=bool)
    in_view[list(v.class_ids)] = True
    valid = in_view[np.clip(cls, -1, 255)] & (cls >= 0)
    label = np.zeros(256, dtype=np.int64)
    label[: len(TRAINID_TO_LABELID)] = TRAINID_TO_LABELID
    lab = label[np.clip(cls, 0, 255)]
    seg = np.where(valid, np.where(k > 0, lab * LABEL_DIVISOR + k, lab), 0)
    uniq, inv, area = np.unique(seg, return_inverse=True, return_counts=True)
    inv = inv.reshape(seg.shape)
    h, w = seg.shape
    n = len(uniq)
    rows = np.bincount((inv * h + np.arange(h)[:, None]).ravel(), minlength=n * h).reshape(n, h) > 0
    cols = np.bincount((inv * w + np.arange(w)[None, :]).ravel(), minlength=n * w).reshape(n, w) > 0
    y0, y1 = rows.argmax(1), h - 1 - rows[:, ::-1].argmax(1)
    x0, x1 = cols.argmax(1), w - 1 - cols[:, ::-1].argmax(1)
    thing_label = np.zeros(256, dtype=bool)
    thing_label[[TRAINID_TO_LABELID[t] for t in things]] = True
    infos = []
    for j, sid in enumerate(uniq.tolist()):
        if sid == 0:
            continue
        label_id = sid // LABEL_DIVISOR if sid >= LABEL_DIVISOR else sid
        is_crowd = crowd and sid < LABEL_DIVISOR and bool(thing_label[label_id])
        infos.append(
            {
                "id": int(sid),
                "category_id": int(label_id),
                "area": int(area[j]),
                "bbox": [int(x0[j]), int(y0[j]), int(x1[j] - x0[j] + 1), int(y1[j] - y0[j] + 1)],
                "iscrowd": int(is_crowd),
            }
        )
    return seg, infos


class CocoPanopticExport:
    """Collects predictions (and ground truth) and writes them in the official evaluation's format.

    Files under ``root``: ``gt_panoptic/<image_id>_panoptic.png`` + ``gt_panoptic.json`` and
    ``pred_panoptic/<image_id>_panoptic.png`` + ``pred_panoptic.json`` (each folder is its JSON's name
    without ``.json``, the official scripts' default). ``image_id`` is the Cityscapes stem
    ``<city>_<seq>_<frame>``. Call :meth:`add` per image, then :meth:`write` for the JSON files.
    """

    def __init__(self, root, view: ClassView | str | int = "19", things=THING_TRAINIDS):
        self.root = Path(root)
        self.view = _view(view)
        self.things = tuple(things)
        self.gt_folder = self.root / "gt_panoptic"
        self.pred_folder = self.root / "pred_panoptic"
        self.gt_json = self.root / "gt_panoptic.json"
        self.pred_json = self.root / "pred_panoptic.json"
        self._gt: list[dict] = []
        self._pred: list[dict] = []
        self._images: list[dict] = []

    def categories(self) -> list[dict]:
        """The view's classes as COCO categories (Cityscapes labelIds, ``isthing``, colour)."""
        return [
            {
                "id": int(TRAINID_TO_LABELID[c]),
                "name": CLASS_NAMES[c],
                "isthing": int(c in self.things),
                "color": [int(x) for x in PALETTE[c]],
                "supercategory": "thing" if c in self.things else "stuff",
            }
            for c in self.view.class_ids
        ]

    def add(self, image_id: str, pred_ids, gt_ids=None) -> None:
        """Write the PNG(s) of one image and remember its ``segments_info``."""
        file_name = f"{image_id}_panoptic.png"
        seg, infos = coco_panoptic_segments(pred_ids, self.view, self.things, crowd=False)
        write_image(self.pred_folder / file_name, id_to_rgb(seg))
        self._pred.append({"image_id": image_id, "file_name": file_name, "segments_info": infos})
        if gt_ids is not None:
            gseg, ginfos = coco_panoptic_segments(gt_ids, self.view, self.things, crowd=True)
            if gseg.shape != seg.shape:
                raise ValueError(f"{image_id}: prediction {seg.shape} and ground truth {gseg.shape} differ in size")
            write_image(self.gt_folder / file_name, id_to_rgb(gseg))
            self._gt.append({"image_id": image_id, "file_name": file_name, "segments_info": ginfos})
        h, w = seg.shape
        self._images.append({"id": image_id, "file_name": f"{image_id}_leftImg8bit.png", "height": h, "width": w})

    def write(self) -> dict:
        """Write the JSON files; returns the four paths ``cityscapes_official_pq`` takes."""
        cats = self.categories()
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            self.pred_json, json.dumps({"images": self._images, "annotations": self._pred, "categories": cats})
        )
        out = {"pred_json": self.pred_json, "pred_folder": self.pred_folder}
        if self._gt:
            atomic_write_text(
                self.gt_json, json.dumps({"images": self._images, "annotations": self._gt, "categories": cats})
            )
            out.update(gt_json=self.gt_json, gt_folder=self.gt_folder)
        return out


def cityscapes_official_pq(
    gt_json, gt_folder, pred_json, pred_folder, multicore: bool = False, quiet: bool = True
) -> dict:
    """PQ / SQ / RQ from the official ``cityscapesscripts`` panoptic evaluation on exported files.

    Runs the package's own ``pq_compute_single_core`` (or ``pq_compute_multi_core``, one process per
    CPU, with ``multicore``) and ``PQStat.pq_average`` on the matched annotations, as its
    ``evaluatePanoptic`` does, without writing a results file. (cityscapesscripts 2.x has no
    ``pq_compute`` function; these are the functions ``evaluatePanoptic`` calls.) Returns the
    official dict: ``{"All" | "Things" | "Stuff": {"pq", "sq", "rq", "n"}, "per_class": {labelId:
    {"pq", "sq", "rq"}}}`` (fractions). A split with no class present gets NaNs and ``n = 0`` where
    the official script would divide by zero.
    """
    from cityscapesscripts.evaluation import evalPanopticSemanticLabeling as cs_pan

    gt = json.loads(Path(gt_json).read_text())
    pred = json.loads(Path(pred_json).read_text())
    categories = {el["id"]: el for el in gt["categories"]}
    pred_by_id = {el["image_id"]: el for el in pred["annotations"]}
    matched = []
    for ann in gt["annotations"]:
        if ann["image_id"] not in pred_by_id:
            raise KeyError(f"no prediction for the image with id {ann['image_id']} in {pred_json}")
        matched.append((ann, pred_by_id[ann["image_id"]]))
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext():
        if multicore:
            stat = cs_pan.pq_compute_multi_core(matched, str(gt_folder), str(pred_folder), categories)
        else:
            stat = cs_pan.pq_compute_single_core(0, matched, str(gt_folder), str(pred_folder), categories)
    results: dict = {}
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        try:
            results[name], per_class = stat.pq_average(categories, isthing=isthing)
        except ZeroDivisionError:
            results[name] = {"pq": float("nan"), "sq": float("nan"), "rq": float("nan"), "n": 0}
            per_class = None
        if name == "All":
            results["per_class"] = per_class if per_class is not None else dict.fromkeys(categories)
    return results
