"""Panoptic labels: instance-id readers on files in the real formats, the id encoding and the
Panoptic-DeepLab targets against closed forms."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from balda.core.errors import DataError
from balda.data.panoptic import (
    SYNTHIA_THING_TRAINIDS,
    THING_TRAINIDS,
    VOID_ID,
    check_pair,
    encode_panoptic,
    panoptic_targets,
    read_cityscapes_instance_ids,
    read_synthia_instance_ids,
    stuff_ids,
    thing_ids,
)


def test_thing_views():
    assert thing_ids("19") == THING_TRAINIDS == (11, 12, 13, 14, 15, 16, 17, 18)
    assert thing_ids("16") == SYNTHIA_THING_TRAINIDS == (11, 12, 13, 15, 17, 18)
    assert 9 not in stuff_ids("16") and set(stuff_ids("19")) == set(range(11))


# ------------------------------------------------------------------------------------ Cityscapes
def _cityscapes_raw() -> np.ndarray:
    raw = np.full((12, 16), 7, dtype=np.int32)  # road
    raw[0, :] = 0  # unlabeled
    raw[1:4, 1:5] = 26000  # car, first instance has index 0
    raw[1:4, 6:9] = 26001
    raw[5:8, 1:4] = 24  # person crowd region
    raw[5:8, 5:8] = 24003
    raw[9:11, 9:12] = 29000  # caravan: an instance class that is void in trainIds
    raw[9:11, 13:15] = 23  # sky
    return raw


def _save_16bit(path, raw: np.ndarray, writer: str = "pil") -> None:
    """The real files are 16-bit greyscale PNGs (PNG has no 32-bit grey); PIL reads them as 'I'/'I;16'."""
    if writer == "pil":
        img = Image.fromarray(raw.astype(np.uint16))
        assert img.mode == "I;16"
        img.save(path)
    else:
        assert cv2.imwrite(str(path), raw.astype(np.uint16))


@pytest.mark.parametrize("writer", ["pil", "cv2"])
def test_read_cityscapes_instance_ids(tmp_path, writer):
    raw = _cityscapes_raw()
    p = tmp_path / "aachen_000000_000019_gtFine_instanceIds.png"
    _save_16bit(p, raw, writer)
    assert Image.open(p).mode in ("I", "I;16")
    sem, ins = read_cityscapes_instance_ids(p)
    assert sem.dtype == np.uint8 and ins.dtype == np.int32
    exp_sem = np.full(raw.shape, 0, np.uint8)
    exp_sem[0] = 255
    exp_sem[1:4, 1:9] = 13
    exp_sem[1:4, 5] = 0
    exp_sem[5:8, 1:4] = 11
    exp_sem[5:8, 5:8] = 11
    exp_sem[9:11, 9:12] = 255
    exp_sem[9:11, 13:15] = 10
    np.testing.assert_array_equal(sem, exp_sem)
    exp_ins = np.where((raw >= 1000) & (raw < 29000), raw, 0)
    np.testing.assert_array_equal(ins, exp_ins)
    ids = encode_panoptic(sem, ins)
    assert ids[1, 1] == 13001 and ids[1, 6] == 13002 and ids[5, 5] == 11001
    assert ids[5, 1] == 11000 and ids[2, 0] == 0 and ids[0, 0] == VOID_ID and ids[9, 9] == VOID_ID


@pytest.mark.parametrize(
    "value, what",
    [(7001, "instance ids"), (12000, "instance ids"), (40, "not Cityscapes labelIds"), (65000, "instance ids")],
)
def test_malformed_cityscapes_instance_ids(tmp_path, value, what):
    raw = _cityscapes_raw()
    raw[3, 3] = value
    p = tmp_path / "bad_gtFine_instanceIds.png"
    _save_16bit(p, raw)
    with pytest.raises(DataError, match=what) as e:
        read_cityscapes_instance_ids(p)
    assert p.name in str(e.value) and e.value.path == p


def test_cityscapes_instance_ids_rejects_colour_and_size(tmp_path):
    p = tmp_path / "x_gtFine_instanceIds.png"
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(p)
    with pytest.raises(DataError, match="single-channel") as e:
        read_cityscapes_instance_ids(p)
    assert p.name in str(e.value)
    _save_16bit(p, _cityscapes_raw())
    with pytest.raises(DataError, match="was expected") as e:
        read_cityscapes_instance_ids(p, expected_shape=(12, 15))
    assert e.value.path == p
    with pytest.raises(DataError, match="not found"):
        read_cityscapes_instance_ids(tmp_path / "missing.png")


def test_check_pair(tmp_path):
    check_pair("a.png", "b.png", np.zeros((3, 4)), np.zeros((3, 4)))
    with pytest.raises(DataError, match="b_instanceIds.png.*a_labelIds.png") as e:
        check_pair(tmp_path / "a_labelIds.png", tmp_path / "b_instanceIds.png", np.zeros((3, 4)), np.zeros((4, 3)))
    assert e.value.path == tmp_path / "b_instanceIds.png"


# --------------------------------------------------------------------------------------- SYNTHIA
def _write_synthia(path, cls: np.ndarray, inst: np.ndarray, seed: int = 0) -> None:
    """OpenCV BGR uint16: class in R (index 2), instance id in G (index 1), B unrelated."""
    arr = np.zeros(cls.shape + (3,), np.uint16)
    arr[..., 2] = cls
    arr[..., 1] = inst
    arr[..., 0] = np.random.default_rng(seed).integers(0, 60000, cls.shape)
    assert cv2.imwrite(str(path), arr)


def test_read_synthia_instance_ids(tmp_path):
    cls = np.full((8, 10), 3, np.uint16)  # road
    inst = np.zeros((8, 10), np.uint16)
    cls[1:3, 1:4], inst[1:3, 1:4] = 8, 300  # car, instance 300
    cls[1:3, 5:8], inst[1:3, 5:8] = 8, 301
    cls[4:6, 1:3], inst[4:6, 1:3] = 10, 300  # pedestrian with the same G value: another instance
    cls[4:6, 5:7], inst[4:6, 5:7] = 10, 0  # pedestrian without an instance id
    inst[7, :] = 500  # G on stuff pixels is not an instance
    p = tmp_path / "0000001.png"
    _write_synthia(p, cls, inst)
    sem, ins = read_synthia_instance_ids(p)
    assert sem[0, 0] == 0 and sem[1, 1] == 13 and sem[4, 1] == 11
    assert ins.dtype == np.int32
    assert (ins[cls == 3] == 0).all() and (ins[4:6, 5:7] == 0).all()
    vals = [ins[1, 1], ins[1, 5], ins[4, 1]]
    assert len(set(vals)) == 3 and min(vals) > 0
    assert (ins[1:3, 1:4] == vals[0]).all() and (ins[1:3, 5:8] == vals[1]).all()
    # the instance channel is a parameter: reading B as instances gives other ids
    _, ins_b = read_synthia_instance_ids(p, instance_channel=0)
    assert not np.array_equal(ins_b, ins)


def test_malformed_synthia(tmp_path):
    p = tmp_path / "0000002.png"
    assert cv2.imwrite(str(p), np.full((4, 4), 3, np.uint16))
    with pytest.raises(DataError, match="channel") as e:
        read_synthia_instance_ids(p)
    assert p.name in str(e.value)
    cls = np.full((4, 4), 30, np.uint16)
    _write_synthia(p, cls, np.zeros((4, 4), np.uint16))
    with pytest.raises(DataError, match=r"class ids \[30\]") as e:
        read_synthia_instance_ids(p)
    assert e.value.path == p
    _write_synthia(p, np.full((4, 4), 3, np.uint16), np.zeros((4, 4), np.uint16))
    with pytest.raises(DataError, match="was expected"):
        read_synthia_instance_ids(p, expected_shape=(4, 5))
    p.write_bytes(p.read_bytes()[:40])
    with pytest.raises(DataError, match="truncated|decode"):
        read_synthia_instance_ids(p)


# --------------------------------------------------------------------------------------- targets
def _scene():
    sem = np.zeros((40, 50), np.uint8)
    ins = np.zeros((40, 50), np.int32)
    # an L-shaped car (centre of mass off the pixel grid)
    sem[5:15, 5:9], ins[5:15, 5:9] = 13, 7
    sem[11:15, 9:20], ins[11:15, 9:20] = 13, 7
    # a person rectangle
    sem[20:31, 30:37], ins[20:31, 30:37] = 11, 3
    # crowd region and void
    sem[33:38, 2:10] = 13
    sem[0:2, :] = 255
    return sem, ins


def test_targets_closed_form():
    sem, ins = _scene()
    sigma = 3.0
    t = panoptic_targets(sem, ins, sigma=sigma, small_area=60, small_weight=3.0)
    ys, xs = np.indices(sem.shape)
    np.testing.assert_array_equal(t["instance_ids"], [3, 7])
    for j, i in enumerate(t["instance_ids"]):
        m = ins == i
        c = np.array([ys[m].mean(), xs[m].mean()])
        np.testing.assert_allclose(t["centers"][j], c, atol=1e-5)
        np.testing.assert_allclose(t["offset"][0][m], c[0] - ys[m], atol=1e-5)
        np.testing.assert_allclose(t["offset"][1][m], c[1] - xs[m], atol=1e-5)
        peak = np.floor(c + 0.5).astype(int)
        assert t["center"][peak[0], peak[1]] == 1.0
        for dy, dx in [(1, 0), (2, -1), (-3, 3)]:
            expected = np.exp(-(dy * dy + dx * dx) / (2 * sigma**2))
            assert t["center"][peak[0] + dy, peak[1] + dx] == pytest.approx(expected, rel=1e-5)
    fg = ins > 0
    assert (t["offset"][:, ~fg] == 0).all()
    np.testing.assert_array_equal(t["offset_weight"], fg.astype(np.float32))
    crowd = (sem == 13) & (ins == 0)
    np.testing.assert_array_equal(t["center_weight"], (~(crowd | (sem == 255))).astype(np.float32))
    # the person has 77 px >= 60, the car 84 px: no small instance; then make 80 the threshold
    assert (t["semantic_weight"] == 1).all()
    t2 = panoptic_targets(sem, ins, sigma=sigma, small_area=80, small_weight=3.0)
    np.testing.assert_array_equal(t2["semantic_weight"], np.where(ins == 3, 3.0, 1.0))
    t3 = panoptic_targets(sem, ins, sigma=sigma, small_area=80, weight_small=False)
    assert (t3["semantic_weight"] == 1).all()
    assert t["center"].max() == 1.0 and t["center"].min() == 0.0


def test_targets_max_over_overlapping_gaussians_and_torch():
    sem = np.full((20, 30), 0, np.uint8)
    ins = np.zeros((20, 30), np.int32)
    sem[5:8, 5:8], ins[5:8, 5:8] = 13, 1  # centre (6, 6)
    sem[5:8, 11:14], ins[5:8, 11:14] = 13, 2  # centre (6, 12)
    sigma = 4.0
    t = panoptic_targets(sem, ins, sigma=sigma)
    ys, xs = np.indices(sem.shape)
    g1 = np.exp(-((ys - 6) ** 2 + (xs - 6) ** 2) / (2 * sigma**2))
    g2 = np.exp(-((ys - 6) ** 2 + (xs - 12) ** 2) / (2 * sigma**2))
    win = (np.abs(ys - 6) <= 13) & (np.abs(xs - 9) <= 3)  # inside both windows
    np.testing.assert_allclose(t["center"][win], np.maximum(g1, g2)[win], rtol=1e-5)
    tt = panoptic_targets(torch.as_tensor(sem), torch.as_tensor(ins), sigma=sigma)
    assert isinstance(tt["center"], torch.Tensor)
    for k in ("center", "offset", "offset_weight", "center_weight", "semantic_weight"):
        np.testing.assert_array_equal(tt[k].numpy(), t[k])


def test_targets_no_instances_and_bad_shape():
    t = panoptic_targets(np.zeros((5, 6), np.uint8), np.zeros((5, 6), np.int32))
    assert t["center"].sum() == 0 and t["centers"].shape == (0, 2)
    with pytest.raises(ValueError):
        panoptic_targets(np.zeros((5, 6), np.uint8), np.zeros((6, 5), np.int32))


def test_encode_panoptic_numbers_instances_per_class():
    sem = np.array([[13, 13, 11, 0], [13, 14, 11, 255]], np.uint8)
    ins = np.array([[50, 9, 9, 4], [0, 9, 2, 8]], np.int32)
    ids = encode_panoptic(sem, ins)
    np.testing.assert_array_equal(ids, [[13002, 13001, 11002, 0], [13000, 14001, 11001, VOID_ID]])
