import cv2
import numpy as np
import pytest
from PIL import Image

from balda.data.io import (
    LABELID_PALETTE,
    DataError,
    read_image,
    read_label,
    read_synthia_label,
    write_image,
    write_label,
)
from balda.data.labels import CITYSCAPES_LUT, SYNTHIA_LUT
from tests.data.fixtures import corrupt_file, synthia_label_array, truncate_file


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_read_image_rgb_and_grey(tmp_path, rng):
    img = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, img)
    grey = rng.integers(0, 256, (4, 3), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), np.repeat(grey[..., None], 3, axis=2))


def test_read_image_jpeg_is_rgb(tmp_path, rng):
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    assert read_image(tmp_path / "a.jpg").shape == (8, 8, 3)


@pytest.mark.parametrize("reader", [read_image, read_label, read_synthia_label])
def test_missing_corrupt_truncated_files_are_named(tmp_path, rng, reader):
    missing = tmp_path / "nope.png"
    with pytest.raises(DataError, match="nope.png") as ei:
        reader(missing)
    assert ei.value.path == missing

    bad = tmp_path / "corrupt.png"
    corrupt_file(bad)
    with pytest.raises(DataError, match="corrupt.png"):
        reader(bad)

    trunc = tmp_path / "trunc.png"
    if reader is read_synthia_label:
        cv2.imwrite(str(trunc), synthia_label_array(np.full((20, 30), 3, np.uint16), rng))
    elif reader is read_label:
        Image.fromarray(rng.integers(0, 34, (20, 30), dtype=np.uint8)).save(trunc)
    else:
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(trunc)
    truncate_file(trunc)
    with pytest.raises(DataError, match="trunc.png"):
        reader(trunc)


def test_read_label_palette_returns_indices_not_colours(tmp_path, rng):
    ids = rng.choice(np.array([0, 7, 8, 26, 33, 34], np.uint8), size=(6, 9))
    img = Image.fromarray(ids)
    img.putpalette(LABELID_PALETTE.reshape(-1).tolist())
    img.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    out = read_label(tmp_path / "p.png")
    assert out.dtype == np.uint8 and out.shape == (6, 9)
    np.testing.assert_array_equal(out, ids)
    np.testing.assert_array_equal(read_label(tmp_path / "p.png", CITYSCAPES_LUT), CITYSCAPES_LUT[ids])


def test_lut_mapping_exact():
    # the table of specs/datasets.md
    ids = np.array(
        [
            7,
            8,
            11,
            12,
            13,
            17,
            19,
            20,
            21,
            22,
            23,
            24,
            25,
            26,
            27,
            28,
            31,
            32,
            33,
            0,
            1,
            2,
            3,
            4,
            5,
            6,
            9,
            10,
            14,
            15,
            16,
            18,
            29,
            30,
            34,
        ],
        np.uint8,
    )
    expected = list(range(19)) + [255] * 16
    assert CITYSCAPES_LUT[ids].tolist() == expected
    syn = np.array([3, 4, 2, 21, 5, 7, 15, 9, 6, 1, 10, 17, 8, 19, 12, 11, 0, 13, 14, 22], np.uint8)
    assert SYNTHIA_LUT[syn].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18] + [255] * 4


def test_read_label_rejects_rgb(tmp_path, rng):
    Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(tmp_path / "x_color.png")
    with pytest.raises(DataError, match="x_color.png.*single-channel"):
        read_label(tmp_path / "x_color.png")


def test_read_label_16bit(tmp_path):
    ids = np.array([[7, 26], [300, 0]], np.uint16)
    Image.fromarray(ids).save(tmp_path / "i.png")
    np.testing.assert_array_equal(read_label(tmp_path / "i.png", CITYSCAPES_LUT), [[0, 13], [255, 255]])
    with pytest.raises(DataError, match="i.png.*outside 0..255"):
        read_label(tmp_path / "i.png")


def test_read_synthia_label_channel_and_lut(tmp_path, rng):
    cls = np.array([[3, 4, 2], [21, 13, 0], [8, 11, 22]], np.uint16)
    arr = synthia_label_array(cls, rng)
    arr[..., 0] = 7  # the B channel must not be read
    cv2.imwrite(str(tmp_path / "0000000.png"), arr)
    out = read_synthia_label(tmp_path / "0000000.png")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[0, 1, 2], [3, 255, 255], [13, 18, 255]])
    # an id SYNTHIA does not define is an error, never wrapped (259 would wrap to 3, road) nor ignored
    cls[1, 1] = 259
    cv2.imwrite(str(tmp_path / "0000000.png"), synthia_label_array(cls, rng))
    with pytest.raises(DataError, match=r"0000000\.png holds class ids \[259\]"):
        read_synthia_label(tmp_path / "0000000.png")


def test_write_label_roundtrip_palette_and_grey(tmp_path, rng):
    lab = rng.integers(0, 19, (5, 6)).astype(np.uint8)
    lab[0, 0] = 255
    write_label(tmp_path / "sub" / "p.png", lab)
    assert Image.open(tmp_path / "sub" / "p.png").mode == "P"
    np.testing.assert_array_equal(read_label(tmp_path / "sub" / "p.png"), lab)
    write_label(tmp_path / "g.png", lab, palette=False)
    assert Image.open(tmp_path / "g.png").mode == "L"
    np.testing.assert_array_equal(read_label(tmp_path / "g.png"), lab)
    assert not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(ValueError, match="q.png"):
        write_label(tmp_path / "q.png", np.zeros((2, 2, 3), np.uint8))


def test_write_image_roundtrip(tmp_path, rng):
    img = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    write_image(tmp_path / "a" / "b.png", img)
    np.testing.assert_array_equal(read_image(tmp_path / "a" / "b.png"), img)
    with pytest.raises(ValueError, match="c.png"):
        write_image(tmp_path / "c.png", img.astype(np.float32))
