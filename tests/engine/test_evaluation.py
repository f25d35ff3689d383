"""Tests of balda.engine.evaluation: confusion matrix, metrics, inference, export, official check."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from balda.config import EvalConfig
from balda.data.labels import (
    CITYSCAPES_LUT,
    CLASS_NAMES,
    TRAINID_TO_LABELID,
    VIEW_13,
    VIEW_16,
    VIEW_19,
    ClassView,
)
from balda.engine.evaluation import (
    Metrics,
    confusion_matrix,
    evaluate,
    export_prediction,
    predict_slide,
    predict_whole,
    slide_windows,
)
from balda.models.base import SegOutput

VIEW_3 = ClassView("3", (0, 1, 2))


# ------------------------------------------------------------------------------ confusion matrix
def _brute_confusion(pred: np.ndarray, label: np.ndarray, k: int, ignore: int = 255) -> np.ndarray:
    out = np.zeros((k, k), dtype=np.int64)
    valid = label != ignore
    for g in range(k):
        for p in range(k):
            out[g, p] = np.count_nonzero(valid & (label == g) & (pred == p))
    return out


def test_confusion_matrix_matches_brute_force():
    rng = np.random.default_rng(0)
    k = 6
    label = rng.integers(0, k, size=(3, 17, 23)).astype(np.uint8)
    label[rng.random(label.shape) < 0.2] = 255
    pred = rng.integers(0, k, size=label.shape)
    conf = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(label), k)
    assert conf.dtype == torch.long and conf.shape == (k, k)
    np.testing.assert_array_equal(conf.numpy(), _brute_confusion(pred, label, k))
    assert int(conf.sum()) == int((label != 255).sum())


def test_ignore_pixels_are_excluded():
    rng = np.random.default_rng(1)
    label = rng.integers(0, 4, size=(8, 8))
    pred = rng.integers(0, 4, size=(8, 8))
    masked = label.copy()
    masked[:, 4:] = 255
    conf = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(masked), 4).numpy()
    ref = confusion_matrix(torch.from_numpy(pred[:, :4]), torch.from_numpy(label[:, :4]), 4).numpy()
    np.testing.assert_array_equal(conf, ref)
    assert conf.sum() == 32


# ------------------------------------------------------------------------------------- metrics
def test_hand_computed_three_class_example():
    label = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 255])
    pred = torch.tensor([0, 0, 1, 2, 1, 1, 1, 2, 0])
    conf = confusion_matrix(pred, label, 3)
    np.testing.assert_array_equal(conf.numpy(), [[2, 1, 1], [0, 2, 0], [0, 1, 1]])
    m = Metrics.from_confusion(conf, VIEW_3)
    # TP = [2, 2, 1], GT = [4, 2, 2], predicted = [2, 4, 2]
    np.testing.assert_allclose(m.iou, [2 / 4, 2 / 4, 1 / 3])
    np.testing.assert_allclose(m.recall, [0.5, 1.0, 0.5])
    np.testing.assert_allclose(m.precision, [1.0, 0.5, 0.5])
    assert m.miou == pytest.approx((0.5 + 0.5 + 1 / 3) / 3)
    assert m.min_iou == pytest.approx(1 / 3)
    assert m.acc == pytest.approx(5 / 8)
    assert m.mean_recall == pytest.approx(2 / 3)
    assert m.rare_recall([1, 2]) == pytest.approx(0.75)


def test_nan_for_undefined_classes():
    # class 3 absent from GT and prediction; class 2 predicted but absent from GT.
    conf = np.array([[5, 0, 1, 0], [1, 3, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    m = Metrics.from_confusion(conf, ClassView("4", (0, 1, 2, 3)))
    assert math.isnan(m.iou[3]) and math.isnan(m.recall[3]) and math.isnan(m.precision[3])
    assert m.iou[2] == 0.0 and m.precision[2] == 0.0 and math.isnan(m.recall[2])
    assert m.miou == pytest.approx((5 / 7 + 3 / 4 + 0.0) / 3)
    assert m.min_iou == 0.0
    d = m.to_dict()
    json.dumps(d)  # JSON-friendly: NaN became None
    assert d["per_class"]["class_3"]["iou"] is None and d["per_class"]["class_2"]["iou"] == 0.0


def test_views_average_over_their_classes_without_renumbering():
    rng = np.random.default_rng(2)
    conf = rng.integers(0, 50, size=(19, 19))
    conf[16, :] = 0  # train absent from GT
    conf[:, 16] = 0  # and never predicted -> NaN IoU
    conf[9, 0] += 1000  # terrain confused with road: hurts road's IoU in every view
    m19, m16, m13 = (Metrics.from_confusion(conf, v) for v in (VIEW_19, VIEW_16, VIEW_13))
    np.testing.assert_array_equal(m19.iou, m16.iou)
    np.testing.assert_array_equal(m19.iou, m13.iou)
    assert len(m16.iou) == 19 and len(m13.iou) == 19
    assert math.isnan(m19.iou[16])
    assert m19.miou == pytest.approx(np.mean(np.delete(m19.iou, 16)))
    ids16 = [c for c in range(19) if c not in (9, 14, 16)]
    ids13 = [c for c in ids16 if c not in (3, 4, 5)]
    assert m16.miou == pytest.approx(np.mean(m19.iou[ids16]))
    assert m13.miou == pytest.approx(np.mean(m19.iou[ids13]))
    assert m13.min_iou == pytest.approx(np.min(m19.iou[ids13]))
    assert m16.mean_recall == pytest.approx(np.mean(m19.recall[ids16]))
    # Metrics built from a view name as well.
    assert Metrics.from_confusion(conf, "16").miou == m16.miou


def test_rarest_and_rare_recall():
    conf = np.diag([100, 5, 50, 1, 0]).astype(np.int64)
    conf[1, 0] = 5  # class 1: recall 0.5
    conf[3, 2] = 3  # class 3: recall 0.25
    m = Metrics.from_confusion(conf, ClassView("5", (0, 1, 2, 3, 4)), rare_k=2)
    assert m.rarest(2) == (3, 1)  # class 4 is absent from GT and skipped
    assert m.rare_recall() == pytest.approx((0.25 + 0.5) / 2)
    assert m.rare_recall(k=1) == pytest.approx(0.25)
    freq = [0.1, 0.5, 0.05, 0.3, 0.05]
    assert m.rarest(2, freq) == (2, 4)
    m_view = Metrics.from_confusion(conf, ClassView("sub", (0, 1, 2)))
    assert m_view.rarest(1) == (1,)


def test_to_dict_and_table():
    rng = np.random.default_rng(3)
    m = Metrics.from_confusion(rng.integers(0, 30, size=(19, 19)), VIEW_16)
    d = json.loads(json.dumps(m.to_dict()))
    assert set(d["per_class"]) == set(CLASS_NAMES)
    assert d["view"] == "16" and d["miou"] == pytest.approx(m.miou)
    assert d["per_class"]["terrain"]["in_view"] is False
    assert len(d["rare_classes"]) == 6
    table = m.format_table()
    for name in CLASS_NAMES:
        assert name in table
    assert "mIoU16" in table and "terrain*" in table
    assert str(m) == table


# ------------------------------------------------------------------------------------ inference
class Pointwise(nn.Module):
    """A 1x1 conv at full resolution: identical per-pixel logits whatever the window."""

    def __init__(self, k: int = 5, as_tensor: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, k, 1)
        self.as_tensor = as_tensor

    def forward(self, x):
        logits = self.conv(x)
        return logits if self.as_tensor else SegOutput(x, logits)


@pytest.mark.parametrize("size", [(20, 30), (9, 7)])
def test_slide_equals_whole_for_pointwise_model(size):
    model = Pointwise().eval()
    x = torch.randn(2, 3, *size)
    with torch.inference_mode():
        whole = predict_whole(model, x, size)
        slide = predict_slide(model, x, size, crop=(8, 12), stride=(5, 7), num_classes=5)
        # image smaller than the crop: padded, then cropped back
        padded = predict_slide(model, x, size, crop=(32, 40), stride=(16, 16), num_classes=5)
    assert slide.shape == whole.shape == (2, 5, *size)
    torch.testing.assert_close(slide, whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(padded, whole, rtol=1e-5, atol=1e-5)


def test_predict_whole_resizes_and_accepts_tensor_output():
    model = Pointwise(as_tensor=True).eval()
    x = torch.randn(1, 3, 16, 24)
    out = predict_whole(model, x, (32, 48), size=(8, 12))
    assert out.shape == (1, 5, 32, 48)
    ref = F.interpolate(
        model(F.interpolate(x, size=(8, 12), mode="bilinear", align_corners=False)),
        size=(32, 48),
        mode="bilinear",
        align_corners=False,
    )
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize(
    "h,w,crop,stride",
    [
        (20, 30, (8, 12), (5, 7)),
        (17, 17, (5, 5), (5, 5)),
        (10, 10, (10, 10), (3, 3)),
        (33, 65, (16, 16), (11, 13)),
        (6, 40, (6, 16), (4, 20)),
        (512, 1024, (512, 512), (341, 341)),
    ],
)
def test_slide_windows_cover_every_pixel(h, w, crop, stride):
    wins = slide_windows(h, w, crop, stride)
    count = np.zeros((h, w), dtype=np.int64)
    for y1, y2, x1, x2 in wins:
        assert 0 <= y1 < y2 <= h and 0 <= x1 < x2 <= w
        assert (y2 - y1, x2 - x1) == (min(crop[0], h), min(crop[1], w))
        count[y1:y2, x1:x2] += 1
    assert count.min() >= 1
    assert len(set(wins)) == len(wins)


# ------------------------------------------------------------------------------------- evaluate
class Decoder(nn.Module):
    """Reads the class encoded in the red channel (value = 10 * trainId) at stride ``stride``."""

    def __init__(self, k: int = 19, stride: int = 1, never: tuple[int, ...] = ()):
        super().__init__()
        self.k, self.stride, self.never = k, stride, list(never)
        self.register_buffer("classes", torch.arange(k, dtype=torch.float32).view(1, k, 1, 1))
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride)
        logits = -((x[:, :1] / 10.0 - self.classes) ** 2)
        logits[:, self.never] = -1e4  # classes this model never predicts
        return SegOutput(x, logits)


class ArrayDataset:
    def __init__(self, images, labels, names):
        self.images, self.labels, self.names = images, labels, names

    def __len__(self):
        return len(self.images)

    def load(self, i):
        return self.images[i], self.labels[i]


def _encode(pred_train_ids: np.ndarray) -> np.ndarray:
    img = np.zeros((*pred_train_ids.shape, 3), dtype=np.uint8)
    img[..., 0] = pred_train_ids.astype(np.uint8) * 10
    img[..., 1] = 77
    return img


def test_evaluate_accumulates_one_confusion_and_restores_mode(tmp_path):
    rng = np.random.default_rng(4)
    labels, preds, images = [], [], []
    for _ in range(4):
        lab = rng.integers(0, 19, size=(12, 20)).astype(np.uint8)
        lab[rng.random(lab.shape) < 0.1] = 255
        pred = np.where(rng.random(lab.shape) < 0.7, lab, rng.integers(0, 19, size=lab.shape)) % 19
        labels.append(lab), preds.append(pred), images.append(_encode(pred))
    ds = ArrayDataset(images, labels, [f"img{i}" for i in range(4)])
    model = Decoder().train()
    cfg = EvalConfig(batch_size=2, max_images=3)
    m = evaluate(model, ds, cfg, mean=[0, 0, 0], std=[1, 1, 1], export_dir=tmp_path, progress=False)
    assert model.training  # previous mode restored
    ref = sum(_brute_confusion(p, l, 19) for p, l in zip(preds[:3], labels[:3]))
    np.testing.assert_array_equal(m.confusion, ref)
    assert m.view is VIEW_19
    assert sorted(p.name for p in (tmp_path / "labelIds").iterdir()) == [f"img{i}_pred.png" for i in range(3)]
    exported = np.asarray(Image.open(tmp_path / "labelIds" / "img1_pred.png"))
    np.testing.assert_array_equal(exported, np.asarray(TRAINID_TO_LABELID)[preds[1]])
    colour = np.asarray(Image.open(tmp_path / "color" / "img1_pred_color.png"))
    assert colour.shape == (12, 20, 3)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["miou"] == pytest.approx(m.miou) and saved["num_images"] == 3

    # slide mode with a full-resolution pointwise model gives the same matrix
    m2 = evaluate(
        model,
        ds,
        EvalConfig(mode="slide", crop=[8, 8], stride=[5, 6], max_images=3, view="13"),
        mean=[0, 0, 0],
        std=[1, 1, 1],
        progress=True,
    )  # rich bar in a non-tty
    np.testing.assert_array_equal(m2.confusion, ref)
    assert m2.view is VIEW_13


def test_export_prediction_maps_ignore_to_unlabeled(tmp_path):
    pred = np.array([[0, 18, 255], [13, 9, 255]], dtype=np.uint8)
    lab, col = export_prediction(pred, "a_000000_000001", tmp_path)
    np.testing.assert_array_equal(np.asarray(Image.open(lab)), [[7, 33, 0], [26, 22, 0]])
    assert np.asarray(Image.open(col))[0, 2].tolist() == [0, 0, 0]


# ------------------------------------------------------------------- official cityscapesscripts
def _write_cityscapes_tree(root, rng):
    """A tiny Cityscapes val split: 3 images in 2 cities, 64x128, blocky random labelIds.

    GT labelIds are drawn from 0..33 (ignored ids included) but never 'bus' (28) or 'train' (31);
    predictions = GT with noise, sometimes 'bus' (IoU 0: predicted, absent) and never 'train'
    (NaN IoU: absent from both) -- exercising the official averaging over non-NaN classes.
    """
    allowed = np.array([i for i in range(34) if i not in (28, 31)])
    noise_ids = np.array([c for c in range(19) if c != 16])
    stems = ["aachen_000000_000019", "aachen_000001_000019", "bochum_000000_000313"]
    for stem in stems:
        city = stem.split("_")[0]
        blocks = rng.choice(allowed, size=(8, 16))
        label_ids = np.kron(blocks, np.ones((8, 8), dtype=np.int64)).astype(np.uint8)
        train_ids = CITYSCAPES_LUT[label_ids]
        pred = np.where(train_ids == 255, rng.choice(noise_ids, size=train_ids.shape), train_ids)
        flip = rng.random(pred.shape) < 0.3
        pred = np.where(flip, rng.choice(noise_ids, size=pred.shape), pred).astype(np.uint8)
        for sub, arr, suffix in (
            ("leftImg8bit", _encode(pred), "leftImg8bit"),
            ("gtFine", label_ids, "gtFine_labelIds"),
        ):
            d = root / sub / "val" / city
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(d / f"{stem}_{suffix}.png")
    return stems


class CityscapesFixture:
    """Minimal reader of the tiny tree (the project's loader is tested elsewhere)."""

    def __init__(self, root):
        self.files = sorted((root / "leftImg8bit" / "val").glob("*/*_leftImg8bit.png"))
        self.names = [f.name[: -len("_leftImg8bit.png")] for f in self.files]
        self.root = root

    def __len__(self):
        return len(self.files)

    def load(self, i):
        img = np.asarray(Image.open(self.files[i]).convert("RGB"))
        gt = self.root / "gtFine" / "val" / self.files[i].parent.name / f"{self.names[i]}_gtFine_labelIds.png"
        return img, CITYSCAPES_LUT[np.asarray(Image.open(gt))]


def test_miou_matches_official_cityscapes_evaluation(tmp_path, monkeypatch):
    pytest.importorskip("cityscapesscripts")
    from balda.engine.evaluation import cityscapes_official_eval

    root = tmp_path / "cityscapes"
    _write_cityscapes_tree(root, np.random.default_rng(5))
    export = tmp_path / "export"
    monkeypatch.setenv("CITYSCAPES_DATASET", str(root))
    monkeypatch.setenv("CITYSCAPES_RESULTS", str(export / "labelIds"))

    ds = CityscapesFixture(root)
    # stride-2 model: logits are upsampled bilinearly to the full label resolution
    m = evaluate(
        Decoder(stride=2, never=(16,)),
        ds,
        EvalConfig(),
        mean=[0, 0, 0],
        std=[1, 1, 1],
        export_dir=export,
        progress=False,
    )
    assert math.isnan(m.iou[16]) and m.iou[15] == 0.0

    result = cityscapes_official_eval(
        export / "labelIds",
        root / "gtFine" / "val" / "*" / "*_gtFine_labelIds.png",
        json_path=tmp_path / "official.json",
    )
    assert (tmp_path / "official.json").is_file()
    official = result["averageScoreClasses"]
    assert abs(official - m.miou) < 1e-6, (official, m.miou)
    for c, name in enumerate(CLASS_NAMES):
        ours, theirs = m.iou[c], result["classScores"][name]
        assert (math.isnan(ours) and math.isnan(theirs)) or abs(ours - theirs) < 1e-9, name
    # the official matrix (labelIds space) restricted to the 19 evaluated ids is ours
    off_conf = np.asarray(result["confMatrix"], dtype=np.int64)
    ids = np.asarray(TRAINID_TO_LABELID)
    np.testing.assert_array_equal(off_conf[np.ix_(ids, ids)], m.confusion)
