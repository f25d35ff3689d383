"""Property-based fuzzing of the data layer: readers on broken files, label mapping, transforms.

* Readers: random bytes, and valid PNG / JPEG / 16-bit SYNTHIA files truncated and with random
  byte mutations. A reader returns an array of the documented dtype/shape/range or raises
  :class:`~balda.data.io.DataError`; no other exception type, no crash.
* ``map_labels`` on random integer arrays (numpy and torch): output in ``{0..18, 255}`` and equal
  to a per-element Python reference.
* ``TrainTransform`` (resize, crop with padding / cat_max_ratio / required class, flip, jitter,
  normalisation) on random shapes: output shapes, dtypes and value ranges.
"""

from __future__ import annotations

import io
import warnings

import cv2
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from balda.data.io import DataError, read_image, read_label, read_synthia_label
from balda.data.labels import CITYSCAPES_LUT, IGNORE_INDEX, SYNTHIA_LUT, map_labels
from balda.data.transforms import IMAGENET_MEAN, IMAGENET_STD, TrainTransform, photometric_jitter

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TRAIN_IDS = set(range(19)) | {IGNORE_INDEX}


# ---------------------------------------------------------------------------------------- samples
def _png(arr: np.ndarray, mode: str | None = None, palette: bool = False) -> bytes:
    img = Image.fromarray(arr, mode) if mode else Image.fromarray(arr)
    if palette:
        img.putpalette(list(range(256)) * 3)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _samples() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)
    ids = rng.choice(np.array([0, 7, 8, 11, 26, 33, 250, 255], np.uint8), (9, 13))
    jpg = io.BytesIO()
    Image.fromarray(rgb).save(jpg, format="JPEG")
    syn = np.zeros((9, 13, 3), np.uint16)
    syn[..., 2] = rng.integers(0, 23, (9, 13))
    syn[..., 1] = rng.integers(0, 1000, (9, 13))  # instance ids in the other channels
    ok, enc = cv2.imencode(".png", syn)
    assert ok
    return {
        "rgb_png": _png(rgb),
        "grey_png": _png(ids),
        "palette_png": _png(ids, palette=True),
        "i16_png": _png(rng.integers(0, 600, (9, 13)).astype(np.uint16)),
        "jpeg": jpg.getvalue(),
        "synthia_png": enc.tobytes(),
    }


SAMPLES = _samples()


@st.composite
def broken_files(draw) -> bytes:
    """Random bytes, or a valid sample truncated and/or with random bytes overwritten."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=512))
    data = bytearray(SAMPLES[draw(st.sampled_from(sorted(SAMPLES)))])
    cut = draw(st.integers(0, len(data)))
    if draw(st.booleans()):
        data = data[:cut]
    for _ in range(draw(st.integers(0, 6))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "sample.png"


def _only_data_errors(fn, path):
    """``fn(path)`` or None if it raised DataError; any other exception fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. PIL's DecompressionBombWarning on a mutated header
        try:
            return fn(path)
        except DataError as e:
            assert str(path) in str(e)  # the message names the file
            return None


# ----------------------------------------------------------------------------------------- readers
@FUZZ
@given(data=broken_files())
def test_read_image_on_broken_files(fuzz_file, data):
    fuzz_file.write_bytes(data)
    out = _only_data_errors(read_image, fuzz_file)
    if out is not None:
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3


@FUZZ
@given(data=broken_files(), lut=st.booleans())
def test_read_label_on_broken_files(fuzz_file, data, lut):
    fuzz_file.write_bytes(data)
    out = _only_data_errors(lambda p: read_label(p, CITYSCAPES_LUT if lut else None), fuzz_file)
    if out is not None:
        assert out.dtype == np.uint8 and out.ndim == 2
        if lut:
            assert set(np.unique(out).tolist()) <= TRAIN_IDS


@FUZZ
@given(data=broken_files())
def test_read_synthia_label_on_broken_files(fuzz_file, data):
    fuzz_file.write_bytes(data)
    out = _only_data_errors(read_synthia_label, fuzz_file)
    if out is not None:
        assert out.dtype == np.uint8 and out.ndim == 2
        assert set(np.unique(out).tolist()) <= TRAIN_IDS


def test_readers_accept_the_intact_samples(fuzz_file):
    """The mutation bases are valid files (so the fuzzers above start from real formats)."""
    fuzz_file.write_bytes(SAMPLES["rgb_png"])
    assert read_image(fuzz_file).shape == (9, 13, 3)
    fuzz_file.write_bytes(SAMPLES["palette_png"])
    assert read_label(fuzz_file, CITYSCAPES_LUT).shape == (9, 13)
    fuzz_file.write_bytes(SAMPLES["synthia_png"])
    assert read_synthia_label(fuzz_file).shape == (9, 13)


# -------------------------------------------------------------------------------------- map_labels
def _reference(values, lut) -> list[int]:
    return [int(lut[v]) if 0 <= v <= 255 else IGNORE_INDEX for v in values]


_INT_DTYPES = st.sampled_from([np.uint8, np.int8, np.uint16, np.int16, np.int32, np.int64, np.uint32])


@settings(max_examples=100, deadline=None)
@given(
    arr=hnp.arrays(_INT_DTYPES, hnp.array_shapes(min_dims=0, max_dims=3, max_side=7)),
    which=st.sampled_from(["cityscapes", "synthia"]),
)
def test_map_labels_matches_a_python_reference(arr, which):
    lut = CITYSCAPES_LUT if which == "cityscapes" else SYNTHIA_LUT
    out = map_labels(arr, lut)
    assert out.dtype == np.uint8 and out.shape == arr.shape
    flat = [int(v) for v in arr.reshape(-1)]
    assert out.reshape(-1).tolist() == _reference(flat, lut)
    assert set(out.reshape(-1).tolist()) <= TRAIN_IDS
    if arr.dtype != np.uint32:  # torch has no uint32 tensors on every version
        t = map_labels(torch.from_numpy(arr.astype(np.int64)), lut)
        assert t.reshape(-1).tolist() == _reference(flat, lut)


# -------------------------------------------------------------------------------------- transforms
@st.composite
def transform_cases(draw):
    H, W = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    crop = draw(st.one_of(st.none(), st.tuples(st.integers(1, 48), st.integers(1, 48))))
    resize = draw(st.one_of(st.none(), st.tuples(st.integers(1, 48), st.integers(1, 48))))
    labelled = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    return dict(
        H=H,
        W=W,
        crop=crop,
        resize=resize,
        labelled=labelled,
        seed=seed,
        flip=draw(st.sampled_from([0.0, 0.5, 1.0])),
        jitter=draw(st.sampled_from([0.0, 0.2, 0.6])),
        cat_max_ratio=draw(st.sampled_from([1.0, 0.75])),
        required=draw(st.one_of(st.none(), st.integers(0, 18))),
        min_px=draw(st.integers(0, 30)),
    )


@FUZZ
@given(case=transform_cases())
def test_train_transform_shapes_and_ranges(case):
    rng = np.random.default_rng(case["seed"])
    image = rng.integers(0, 256, (case["H"], case["W"], 3), dtype=np.uint8)
    values = np.array(sorted(TRAIN_IDS), np.uint8)
    label = rng.choice(values, (case["H"], case["W"])) if case["labelled"] else None
    tf = TrainTransform(
        crop=case["crop"],
        resize=case["resize"],
        flip=case["flip"],
        cat_max_ratio=case["cat_max_ratio"],
        jitter=case["jitter"],
    )
    img, lab, geom = tf(
        image,
        label,
        np.random.default_rng(case["seed"] + 1),
        required_class=case["required"] if case["labelled"] else None,
        min_class_pixels=case["min_px"],
        return_geometry=True,
    )
    size = case["resize"] or (case["H"], case["W"])
    out_hw = tuple(case["crop"]) if case["crop"] else tuple(size)
    assert img.dtype == torch.float32 and tuple(img.shape) == (3, *out_hw)
    assert lab.dtype == torch.long and tuple(lab.shape) == out_hw
    lo = torch.tensor([(0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]).view(3, 1, 1)
    hi = torch.tensor([(255 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]).view(3, 1, 1)
    assert torch.isfinite(img).all() and (img >= lo - 1e-5).all() and (img <= hi + 1e-5).all()
    if label is None:
        assert (lab == IGNORE_INDEX).all()
    else:  # labels are moved, never blended: only input values (and the ignore padding) appear
        assert set(lab.unique().tolist()) <= set(np.unique(label).tolist()) | {IGNORE_INDEX}
    y0, x0, y1, x1 = geom["crop_box"].tolist()
    assert 0 <= y0 < y1 and 0 <= x0 < x1 and bool(geom["flip"]) in (True, False)
    if case["crop"] is None:
        assert (y0, x0, y1, x1) == (0.0, 0.0, 1.0, 1.0)


@FUZZ
@given(
    shape=st.tuples(st.integers(1, 24), st.integers(1, 24)),
    strength=st.floats(0.0, 2.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_photometric_jitter_keeps_shape_and_dtype(shape, strength, seed):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    out = photometric_jitter(image, np.random.default_rng(seed), strength)
    assert out.dtype == np.uint8 and out.shape == image.shape
