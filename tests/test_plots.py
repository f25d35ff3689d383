"""Tests of balda.plots: every figure is written as a non-empty PNG of sensible size."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from balda import plots
from balda.data.labels import CLASS_NAMES, colorize


def _check_png(path, min_size=(200, 150), max_side=6000):
    assert path.is_file() and path.stat().st_size > 2000
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
        assert w >= min_size[0] and h >= min_size[1]
        assert max(w, h) <= max_side
        arr = np.asarray(im.convert("RGB"))
    assert arr.std() > 5  # not a blank canvas
    return w, h


def test_plot_class_iou(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.uniform(0.1, 0.9, 19)
    b = a.copy()
    b[16] = np.nan
    p = plots.plot_class_iou(
        {"source only": a * 0.7, "DAFormer": a, "ours": b},
        CLASS_NAMES,
        tmp_path / "sub" / "iou.png",
        title="GTA5 -> Cityscapes",
    )
    assert p == tmp_path / "sub" / "iou.png"
    w, h = _check_png(p, min_size=(800, 400))
    assert w > h


def test_plot_confusion(tmp_path):
    rng = np.random.default_rng(1)
    conf = rng.integers(0, 20, size=(19, 19)) + np.diag(rng.integers(100, 1000, 19))
    conf[16] = 0  # empty row left blank
    p = plots.plot_confusion(conf, CLASS_NAMES, tmp_path / "conf.png", normalize="true")
    _check_png(p, min_size=(600, 600))


def test_plot_confusion_small_normalisations(tmp_path):
    conf = np.array([[50, 2, 0], [5, 30, 1], [0, 0, 0]])
    for norm in ("pred", "all", None):
        _check_png(plots.plot_confusion(conf, ["road", "car", "other"], tmp_path / f"{norm}.png", normalize=norm))


def test_plot_confusion_rejects_bad_args(tmp_path):
    with pytest.raises(ValueError):
        plots.plot_confusion(np.eye(3), ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ValueError):
        plots.plot_confusion(np.eye(2), ["a", "b"], tmp_path / "x.png", normalize="rows")


def test_plot_curves_and_bars(tmp_path):
    x = list(range(0, 4000, 250))
    p = plots.plot_curves(
        {"mIoU": (x, np.linspace(30, 55, len(x))), "min IoU": (x, np.linspace(0, 20, len(x)))},
        tmp_path / "curves.png",
        title="Validation",
        xlabel="iteration",
        ylabel="%",
    )
    _check_png(p)
    p = plots.plot_bars(
        {"source only": 38.6, "AdvEnt": 43.8, "DAFormer": 68.3, "DAFormer+GBW": 69.9},
        tmp_path / "bars.png",
        title="mIoU",
        ylabel="mIoU (%)",
        errors={"DAFormer": 0.5, "DAFormer+GBW": 0.4},
    )
    _check_png(p)
    p = plots.plot_bars({"a": 1.0, "b": 2.0}, tmp_path / "bars2.png", errors=[0.1, 0.2])
    _check_png(p, min_size=(150, 100))


def test_plot_class_weights(tmp_path):
    steps = np.arange(0, 2000, 50)
    t = steps[:, None] / 2000.0
    weights = 1.0 + 0.5 * np.sin(t * 6 + np.arange(19)[None, :])
    p = plots.plot_class_weights(steps, weights, CLASS_NAMES, tmp_path / "weights.png")
    _check_png(p, min_size=(600, 300))
    with pytest.raises(ValueError):
        plots.plot_class_weights(steps, weights[:, :5], CLASS_NAMES, tmp_path / "bad.png")


def test_image_grid(tmp_path):
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, size=(32, 64, 3), dtype=np.uint8)
    lab = rng.integers(0, 19, size=(32, 64)).astype(np.uint8)
    mask = (rng.random((32, 64)) < 0.05).astype(np.uint8) * 255
    rows = [[img, colorize(lab), mask], [img, colorize((lab + 1) % 19)]]
    p = plots.image_grid(rows, tmp_path / "grid.png", titles=["image", "prediction", "acquired"])
    w, h = _check_png(p, min_size=(500, 200))
    assert w > h
    p = plots.image_grid(rows, tmp_path / "grid2.png", titles=[["a", "b", "c"], ["d", "e"]])
    _check_png(p, min_size=(500, 200))
    with pytest.raises(ValueError):
        plots.image_grid([[]], tmp_path / "empty.png")


def test_confusion_colour_bar_is_in_percent_like_its_cells():
    conf = np.array([[3, 1], [0, 4]])
    m, vmax, label = plots.confusion_values(conf, "true")
    assert vmax == 100.0 and "%" in label
    np.testing.assert_allclose(m, [[75.0, 25.0], [0.0, 100.0]])
    counts, cmax, clabel = plots.confusion_values(conf, None)
    assert cmax == 4 and clabel == "pixels"
