import logging
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image

from balda.config import DatasetConfig
from balda.data.datasets import CityscapesDataset, GTA5Dataset, SynthiaDataset, build_dataset
from balda.data.io import DataError
from tests.data.fixtures import corrupt_file, make_cityscapes, make_gta5, make_synthia, truncate_file


# ------------------------------------------------------------------------------------ Cityscapes
def test_cityscapes_labelids_mapped(tmp_path):
    exp = make_cityscapes(tmp_path, "train")
    ds = CityscapesDataset(tmp_path, "train")
    assert ds.names == sorted(exp) == ["aachen_000000_000019", "aachen_000001_000020", "bochum_000000_000019"]
    assert len(ds) == 3 and ds.labelled
    assert all(p.name.endswith("_gtFine_labelIds.png") for p in ds.label_paths)
    for i, name in enumerate(ds.names):
        img, lab = ds.load(i)
        assert img.dtype == np.uint8 and lab.dtype == np.uint8
        np.testing.assert_array_equal(img, exp[name][0])
        np.testing.assert_array_equal(lab, exp[name][1])
    assert set(np.unique(np.concatenate([ds.load_label(i).ravel() for i in range(3)]))) <= set(range(19)) | {255}


def test_cityscapes_prefers_labeltrainids(tmp_path):
    exp = make_cityscapes(tmp_path, "val", cities={"frankfurt": 2}, train_ids=True)
    ds = CityscapesDataset(tmp_path, "val")
    assert all(p.name.endswith("_gtFine_labelTrainIds.png") for p in ds.label_paths)
    for i, name in enumerate(ds.names):
        np.testing.assert_array_equal(ds.load(i)[1], exp[name][1])


def test_cityscapes_invalid_trainids_named(tmp_path):
    make_cityscapes(tmp_path, "val", cities={"lindau": 1}, train_ids=True)
    ds = CityscapesDataset(tmp_path, "val")
    Image.fromarray(np.full((16, 32), 33, np.uint8)).save(ds.label_paths[0])
    with pytest.raises(DataError, match="lindau_000000_000019_gtFine_labelTrainIds.png.*33"):
        ds.load(0)


def test_cityscapes_missing_label_named(tmp_path, caplog):
    make_cityscapes(tmp_path, "train")
    (tmp_path / "gtFine/train/bochum/bochum_000000_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(DataError, match="bochum_000000_000019_leftImg8bit.png"):
        CityscapesDataset(tmp_path, "train")
    with caplog.at_level(logging.WARNING, logger="balda.data"):
        ds = CityscapesDataset(tmp_path, "train", on_error="skip")
    assert len(ds) == 2 and "bochum_000000_000019" in caplog.text
    # unlabelled: no label needed, no gtFine at all
    shutil.rmtree(tmp_path / "gtFine")
    ds = CityscapesDataset(tmp_path, "train", labelled=False)
    assert len(ds) == 3 and ds.label_paths is None
    img, lab = ds.load(2)
    assert lab is None and img.shape == (16, 32, 3)


def test_cityscapes_empty_or_missing_folder(tmp_path):
    with pytest.raises(DataError, match="leftImg8bit/train"):
        CityscapesDataset(tmp_path, "train")
    (tmp_path / "leftImg8bit/train/aachen").mkdir(parents=True)
    with pytest.raises(DataError, match="leftImg8bit/train"):
        CityscapesDataset(tmp_path, "train")


def test_max_items_and_index_errors(tmp_path):
    make_cityscapes(tmp_path, "train")
    ds = CityscapesDataset(tmp_path, "train", max_items=2)
    assert ds.names == ["aachen_000000_000019", "aachen_000001_000020"]
    with pytest.raises(IndexError):
        ds.load(2)
    with pytest.raises(ValueError, match="on_error"):
        CityscapesDataset(tmp_path, "train", on_error="ignore")


# ----------------------------------------------------------------------------------------- GTA5
def test_gta5_palette_labels_and_missing_ids(tmp_path):
    exp = make_gta5(tmp_path, ids=(3, 1, 10))
    assert Image.open(tmp_path / "labels/00001.png").mode == "P"
    ds = GTA5Dataset(tmp_path)
    assert ds.names == ["00001", "00003", "00010"]
    for i, name in enumerate(ds.names):
        img, lab = ds.load(i)
        np.testing.assert_array_equal(img, exp[name][0])
        np.testing.assert_array_equal(lab, exp[name][1])
    assert (ds.load(0)[1] == 255).any()  # ids outside the 19 classes are ignored


def test_gta5_missing_label_is_an_error_or_skipped_with_warning(tmp_path, caplog):
    make_gta5(tmp_path, ids=(1, 2, 4))
    (tmp_path / "labels/00002.png").unlink()
    with pytest.raises(DataError, match=r"00002\.png has no label"):
        GTA5Dataset(tmp_path)  # on_error=raise, as for Cityscapes
    with caplog.at_level(logging.WARNING, logger="balda.data"):
        ds = GTA5Dataset(tmp_path, on_error="skip")
    assert ds.names == ["00001", "00004"]
    assert "00002.png" in caplog.text
    assert len(GTA5Dataset(tmp_path, labelled=False)) == 3


def test_gta5_size_mismatch_resized_nearest(tmp_path, caplog):
    make_gta5(tmp_path, ids=(1,), size=(8, 12))
    lab = np.zeros((4, 6), np.uint8)
    lab[:2, :3] = 26  # car, top-left quarter
    lab[2:, 3:] = 7  # road, bottom-right quarter
    Image.fromarray(lab).save(tmp_path / "labels/00001.png")
    ds = GTA5Dataset(tmp_path)
    with caplog.at_level(logging.WARNING, logger="balda.data"):
        img, out = ds.load(0)
    assert "00001.png" in caplog.text
    expected = np.full((8, 12), 255, np.uint8)
    expected[:4, :6] = 13
    expected[4:, 6:] = 0
    np.testing.assert_array_equal(out, expected)


def test_cityscapes_size_mismatch_is_an_error(tmp_path):
    make_cityscapes(tmp_path, "val", cities={"lindau": 1})
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(
        tmp_path / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png"
    )
    with pytest.raises(DataError, match="lindau_000000_000019_gtFine_labelIds.png"):
        CityscapesDataset(tmp_path, "val").load(0)


def test_gta5_empty_folders(tmp_path):
    with pytest.raises(DataError, match="images"):
        GTA5Dataset(tmp_path)
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="images"):
        GTA5Dataset(tmp_path)
    make_gta5(tmp_path, ids=(1,))
    shutil.rmtree(tmp_path / "labels")
    with pytest.raises(DataError, match="labels"):
        GTA5Dataset(tmp_path)


def test_corrupt_and_truncated_files_load_or_skip(tmp_path, caplog):
    make_gta5(tmp_path, ids=(1, 2, 3, 4))
    corrupt_file(tmp_path / "images/00002.png")
    truncate_file(tmp_path / "labels/00003.png")
    ds = GTA5Dataset(tmp_path, on_error="skip")
    with pytest.raises(DataError, match="00002.png"):
        ds.load(1)
    with pytest.raises(DataError, match="00003.png"):
        ds.load(2)
    with caplog.at_level(logging.WARNING, logger="balda.data"):
        i, img, lab = ds.load_or_skip(1)
    assert i == 3 and lab.shape == (16, 24)
    assert "00002" in caplog.text and "00003" in caplog.text
    assert ds.load_or_skip(0)[0] == 0
    # wrap around at the end
    corrupt_file(tmp_path / "images/00004.png")
    ds = GTA5Dataset(tmp_path)
    assert ds.load_or_skip(3)[0] == 0
    corrupt_file(tmp_path / "images/00001.png")
    with pytest.raises(DataError, match="no readable item"):
        GTA5Dataset(tmp_path).load_or_skip(0)


# -------------------------------------------------------------------------------------- SYNTHIA
@pytest.mark.parametrize("nested", [True, False])
def test_synthia_uint16_labels(tmp_path, nested):
    exp = make_synthia(tmp_path, ids=(0, 5, 2), nested=nested)
    ds = SynthiaDataset(tmp_path)  # holds RAND_CITYSCAPES/, or RGB/ + GT/ directly
    assert ds.names == ["0000000", "0000002", "0000005"]
    for i, name in enumerate(ds.names):
        img, lab = ds.load(i)
        np.testing.assert_array_equal(img, exp[name][0])
        np.testing.assert_array_equal(lab, exp[name][1])
    # root given as RAND_CITYSCAPES itself
    if nested:
        assert len(SynthiaDataset(tmp_path / "RAND_CITYSCAPES")) == 3
    all_labels = np.stack([ds.load_label(i) for i in range(3)])
    assert not np.isin(all_labels, [9, 14, 16]).any()  # absent in SYNTHIA-RAND


def test_synthia_missing_folder(tmp_path):
    with pytest.raises(DataError, match="RGB"):
        SynthiaDataset(tmp_path)


# ---------------------------------------------------------------------------------------- build
def test_build_dataset(tmp_path):
    make_gta5(tmp_path / "gta", ids=(1, 2, 3))
    make_synthia(tmp_path / "syn", ids=(0,))
    make_cityscapes(tmp_path / "cs", "val")
    ds = build_dataset(DatasetConfig(kind="gta5", root=str(tmp_path / "gta"), max_items=2))
    assert isinstance(ds, GTA5Dataset) and len(ds) == 2
    assert isinstance(build_dataset(DatasetConfig(kind="synthia", root=str(tmp_path / "syn"))), SynthiaDataset)
    cs = build_dataset(
        DatasetConfig(kind="cityscapes", root=str(tmp_path / "cs"), split="val", labelled=False, on_error="skip")
    )
    assert isinstance(cs, CityscapesDataset) and cs.label_paths is None and cs.on_error == "skip"
    with pytest.raises(DataError, match="root"):
        build_dataset(DatasetConfig(kind="gta5", root=""))


def test_fingerprint_changes_with_files(tmp_path):
    make_gta5(tmp_path, ids=(1, 2))
    f1 = GTA5Dataset(tmp_path).fingerprint()
    assert f1 == GTA5Dataset(tmp_path).fingerprint()
    make_gta5(tmp_path, ids=(3,))
    assert GTA5Dataset(tmp_path).fingerprint() != f1


def test_unknown_label_ids_are_errors(tmp_path):
    """An id no dataset defines (250) is never silently ignored: the error names the file and the id."""
    make_cityscapes(tmp_path, "train")
    ds = CityscapesDataset(tmp_path, "train")
    lab = np.asarray(Image.open(ds.label_paths[0])).copy()
    lab[0, 0] = 250
    Image.fromarray(lab).save(ds.label_paths[0])
    with pytest.raises(DataError, match=r"holds ids \[250\]") as e:
        ds.load(0)
    assert str(ds.label_paths[0]) in str(e.value)
    g = tmp_path / "gta"
    make_gta5(g, ids=(1,))
    Image.fromarray(np.full((8, 8), 250, np.uint8)).save(g / "labels" / "00001.png")
    with pytest.raises(DataError, match="250"):
        GTA5Dataset(g).load_label(0)


def test_gta5_mismatch_with_another_aspect_is_an_error(tmp_path):
    """GTA5 resizes only labels of the image's shape at another size (the real download's odd
    pairs); a 50x20 label for a 128x64 image is a different picture and an error."""
    make_gta5(tmp_path, ids=(1,), size=(64, 128))
    Image.fromarray(np.full((20, 50), 7, np.uint8)).save(tmp_path / "labels/00001.png")
    with pytest.raises(DataError, match="aspect ratios differ"):
        GTA5Dataset(tmp_path).load(0)


def test_synthia_id_outside_its_classes_is_an_error(tmp_path):
    make_synthia(tmp_path, ids=(0,))
    path = tmp_path / "RAND_CITYSCAPES" / "GT" / "LABELS" / "0000000.png"
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    arr[0, 0, 2] = 259  # class channel (R, index 2 in OpenCV's BGR)
    cv2.imwrite(str(path), arr)
    with pytest.raises(DataError, match=r"class ids \[259\]"):
        SynthiaDataset(tmp_path).load_label(0)
