"""Panoptic quality: hand-built cases with known values, and equality with the official
``cityscapesscripts`` panoptic evaluation on the exported COCO-format files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from balda.data.labels import TRAINID_TO_LABELID
from balda.data.panoptic import THING_TRAINIDS, VOID_ID
from balda.engine.panoptic_metrics import (
    CocoPanopticExport,
    PanopticEvaluator,
    PanopticMetrics,
    cityscapes_official_pq,
    pq_stats,
)

pytest.importorskip("cityscapesscripts.evaluation.evalPanopticSemanticLabeling")


def _scene():
    gt = np.zeros((20, 30), np.int64)  # road
    gt[0:5, :] = 10000  # sky
    gt[8:18, 2:12] = 13001  # car, 100 px
    gt[8:14, 16:22] = 13002  # car, 36 px
    gt[15:19, 24:28] = 11001  # person, 16 px
    return gt


def _stats(pred, gt, view="19"):
    e = PanopticEvaluator(view)
    e.add(pred, gt)
    return e.metrics()


def test_perfect_match():
    gt = _scene()
    m = _stats(gt.copy(), gt)
    assert m.mpq == m.msq == m.mrq == 1.0 and m.count() == 4
    assert m.mean("pq", "things") == 1.0 and m.count("things") == 2 and m.count("stuff") == 2
    assert np.isnan(m.pq[1]) and m.to_dict()["per_class"]["sidewalk"]["pq"] is None
    assert "mPQ19" in m.format_table()
    assert m.score == 1.0 and m.summary() == {"mpq": 1.0, "msq": 1.0, "mrq": 1.0, "mpq_things": 1.0, "mpq_stuff": 1.0}
    d = m.to_dict()
    assert d["mpq"] == 1.0 and d["n_things"] == 2 and d["per_class"]["car"]["tp"] == 2


def test_one_fp_one_fn():
    gt = _scene()
    pred = gt.copy()
    pred[8:14, 16:22] = 0  # second car missed -> FN (its pixels predicted road)
    pred[1:4, 1:4] = 13005  # a car in the sky -> FP
    s = pq_stats(pred, gt)
    assert (s["tp"][13], s["fp"][13], s["fn"][13]) == (1, 1, 1)
    m = PanopticMetrics(s["tp"], s["fp"], s["fn"], s["iou"])
    assert m.rq[13] == 0.5 and m.sq[13] == 1.0 and m.pq[13] == 0.5
    # road: IoU = 298 / 334 (the missed car's 36 px are predicted road)
    road_iou = (20 * 30 - 150 - 152) / (20 * 30 - 150 - 152 + 36)
    assert m.pq[0] == pytest.approx(road_iou) and m.sq[0] == pytest.approx(road_iou) and m.rq[0] == 1.0
    # sky: 141 of its 150 px predicted sky, no FP pixels: IoU 141/150
    assert m.pq[10] == pytest.approx(141 / 150)


@pytest.mark.parametrize("covered, matched", [(49, False), (50, False), (51, True)])
def test_iou_threshold_is_strictly_above_half(covered, matched):
    gt = _scene()
    pred = gt.copy()
    pred[8:18, 2:12] = 0
    flat = pred[8:18, 2:12].reshape(-1)
    flat[:covered] = 13001  # a prediction covering `covered` of the car's 100 px, nothing else
    pred[8:18, 2:12] = flat.reshape(10, 10)
    s = pq_stats(pred, gt)
    if matched:
        assert (s["tp"][13], s["fp"][13], s["fn"][13]) == (2, 0, 0)
        assert s["iou"][13] == pytest.approx(1 + covered / 100)
    else:
        assert (s["tp"][13], s["fp"][13], s["fn"][13]) == (1, 1, 1)


def test_void_and_crowd():
    gt = _scene()
    gt[0:5, 0:10] = VOID_ID
    gt[18:20, 0:10] = 13000  # a car crowd region
    pred = gt.copy()
    pred[gt == VOID_ID] = 10000  # sky predicted over void: not in the union
    pred[0:5, 10:12] = 13007  # 10 px car: 0 of them on void -> FP
    pred[0:4, 0:3] = 13008  # 12 px car fully on void -> ignored
    pred[18:20, 0:10] = 13009  # a car on the crowd region -> ignored, crowd never matches
    pred[18:20, 0:4] = 11002  # a person on the car crowd: not its class -> FP
    s = pq_stats(pred, gt)
    assert (s["tp"][13], s["fp"][13], s["fn"][13]) == (2, 1, 0)
    assert (s["tp"][11], s["fp"][11], s["fn"][11]) == (1, 1, 0)
    sky_pred = (pred == 10000).sum()
    sky_gt = (gt == 10000).sum()
    void_sky = ((pred == 10000) & (gt == VOID_ID)).sum()
    inter = ((pred == 10000) & (gt == 10000)).sum()
    assert s["iou"][10] == pytest.approx(inter / (sky_pred + sky_gt - inter - void_sky))


def test_view16_makes_absent_classes_void():
    gt = _scene()
    gt[8:14, 16:22] = 14001  # a truck: void in SYNTHIA-16
    pred = gt.copy()
    pred[8:14, 16:22] = 13003  # predicted car on it: fully on void -> ignored
    pred[19, :] = 9000  # terrain predicted: dropped in the 16-class view
    m16 = _stats(pred, gt, "16")
    assert m16.fp[13] == 0 and m16.tp[14] == 0 and m16.tp[9] == 0 and m16.count() == 4
    m19 = _stats(pred, gt, "19")
    assert m19.fp[13] == 1 and m19.fn[14] == 1 and m19.fp[9] == 1


# ------------------------------------------------------------------------- official equality
def _random_scene(rng, h=48, w=64):
    stuff = np.array([0, 1, 2, 8, 9, 10])
    tiles = rng.choice(stuff, size=(h // 8, w // 8))
    gt = np.repeat(np.repeat(tiles, 8, 0), 8, 1).astype(np.int64) * 1000
    counters = {}
    for _ in range(rng.integers(4, 9)):
        c = int(rng.choice(THING_TRAINIDS))
        y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
        hh, ww = rng.integers(3, 16), rng.integers(3, 20)
        counters[c] = counters.get(c, 0) + 1
        gt[y : y + hh, x : x + ww] = c * 1000 + counters[c]
    if rng.random() < 0.7:  # a crowd region
        c = int(rng.choice(THING_TRAINIDS))
        y, x = rng.integers(0, h - 6), rng.integers(0, w - 6)
        gt[y : y + 6, x : x + 8] = c * 1000
    y, x = rng.integers(0, h - 5), rng.integers(0, w - 5)
    gt[y : y + 5, x : x + 10] = VOID_ID
    # prediction: shifted / cropped / relabelled segments, spurious blobs, missed instances
    pred = np.roll(gt, shift=(int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), axis=(0, 1))
    pred[pred == VOID_ID] = 0
    ids = np.unique(pred)
    for sid in ids:
        r = rng.random()
        m = pred == sid
        if sid % 1000 == 0 and sid // 1000 in THING_TRAINIDS:  # a crowd copied: make it an instance
            pred[m] = sid + 900
        elif r < 0.15:
            pred[m] = 2000  # relabelled as building
        elif r < 0.25 and sid >= 11000:
            pred[m] = (int(rng.choice(THING_TRAINIDS)) * 1000) + 700  # wrong thing class
    for _ in range(rng.integers(1, 4)):
        c = int(rng.choice(THING_TRAINIDS + (3, 9)))
        y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
        pred[y : y + rng.integers(2, 10), x : x + rng.integers(2, 10)] = c * 1000 + (800 if c >= 11 else 0)
    if rng.random() < 0.5:
        pred[rng.integers(0, h) :, : rng.integers(1, w)] = VOID_ID  # unpredicted pixels
    return pred, gt


@pytest.mark.parametrize("view", ["19", "16"])
def test_equals_official_cityscapes_pq(tmp_path, view):
    rng = np.random.default_rng(7 if view == "19" else 8)
    ev = PanopticEvaluator(view)
    ex = CocoPanopticExport(tmp_path, view)
    for i in range(6):
        pred, gt = _random_scene(rng)
        name = f"city_{i:06d}_000019"
        ev.add(pred, gt)
        ex.add(name, pred, gt)
    paths = ex.write()
    official = cityscapes_official_pq(paths["gt_json"], paths["gt_folder"], paths["pred_json"], paths["pred_folder"])
    m = ev.metrics()
    for c in m.view.class_ids:
        off = official["per_class"][int(TRAINID_TO_LABELID[c])]
        if np.isnan(m.pq[c]):
            assert off == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
            continue
        for k in ("pq", "sq", "rq"):
            assert getattr(m, k)[c] == pytest.approx(off[k], abs=1e-12), (c, k)
    for split, name in (("all", "All"), ("things", "Things"), ("stuff", "Stuff")):
        assert m.count(split) == official[name]["n"]
        for k in ("pq", "sq", "rq"):
            assert m.mean(k, split) == pytest.approx(official[name][k], abs=1e-12), (split, k)
    # the scenes exercise every case: matches, FPs, FNs, crowd, void
    assert m.tp.sum() > 10 and m.fp.sum() > 3 and m.fn.sum() > 3 and 0.05 < m.mpq < 0.95


def test_export_format(tmp_path):
    gt = _scene()
    gt[0:2, 0:3] = VOID_ID
    gt[18:20, 0:4] = 11000  # person crowd
    ex = CocoPanopticExport(tmp_path, "19")
    ex.add("aachen_000000_000019", gt, gt)
    paths = ex.write()
    data = json.loads(paths["gt_json"].read_text())
    cats = {c["id"]: c for c in data["categories"]}
    assert len(cats) == 19 and cats[26]["isthing"] == 1 and cats[7]["isthing"] == 0
    ann = data["annotations"][0]
    png = np.asarray(Image.open(paths["gt_folder"] / ann["file_name"]), dtype=np.int64)
    seg = png[..., 0] + 256 * png[..., 1] + 65536 * png[..., 2]
    infos = {s["id"]: s for s in ann["segments_info"]}
    assert set(infos) == set(np.unique(seg).tolist()) - {0}
    assert seg[0, 0] == 0 and seg[9, 3] == 26001 and seg[19, 0] == 24 and seg[10, 0] == 7
    assert infos[24]["iscrowd"] == 1 and infos[26001]["iscrowd"] == 0 and infos[7]["iscrowd"] == 0
    assert infos[26001]["bbox"] == [2, 8, 10, 10] and infos[26001]["area"] == 100
    pred = json.loads(paths["pred_json"].read_text())["annotations"][0]
    assert all(s["iscrowd"] == 0 for s in pred["segments_info"])
