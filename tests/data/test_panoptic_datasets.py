"""Panoptic datasets (balda.data.panoptic_datasets): instance maps of Cityscapes and SYNTHIA splits,
their errors (each naming the file) and the on_error=skip semantics."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
from PIL import Image

from balda.config.schema import DatasetConfig
from balda.core.errors import ConfigError, DataError
from balda.data.datasets import CityscapesDataset, SynthiaDataset
from balda.data.panoptic_datasets import PanopticCityscapesDataset, PanopticSynthiaDataset, build_panoptic_dataset
from balda.data.streets import generate_streets, image_rng, render_scene
from tests.data.fixtures import corrupt_file, make_gta5
from tests.data.panoptic_fixtures import make_cityscapes_panoptic, make_synthia_panoptic


def _cs(tmp_path, **kw):
    files = make_cityscapes_panoptic(tmp_path / "cs")
    cfg = DatasetConfig(kind="cityscapes", root=str(tmp_path / "cs"), **kw)
    return files, cfg


def _inst_path(ds, i):
    return ds.label_paths[i].parent / f"{ds.names[i]}_gtFine_instanceIds.png"


def test_cityscapes_instances(tmp_path):
    files, cfg = _cs(tmp_path)
    ds = build_panoptic_dataset(cfg)
    assert isinstance(ds, PanopticCityscapesDataset) and isinstance(ds, CityscapesDataset)
    plain = CityscapesDataset(cfg.root)
    assert ds.names == plain.names == sorted(files) and len(ds) == 3
    for i, name in enumerate(ds.names):
        image, sem, expected = files[name]
        ins = ds.load_instances(i)
        assert ins.dtype == np.int32 and np.array_equal(ins, expected)
        assert set(np.unique(ins)) == {0, 24000, 25000, 26000, 26001}  # crowd and caravan are 0
        img, lab, ins2 = ds.load_panoptic(i)
        assert np.array_equal(img, image) and np.array_equal(lab, sem) and np.array_equal(ins2, expected)
        assert lab.dtype == np.uint8
        p_img, p_lab = plain.load(i)
        assert np.array_equal(p_img, img) and np.array_equal(p_lab, lab)
        assert ds.instance_paths[i] == _inst_path(ds, i)
    # the semantic-only API is unchanged
    assert np.array_equal(ds.load(0)[1], plain.load(0)[1])


def test_synthia_instances(tmp_path):
    files = make_synthia_panoptic(tmp_path / "syn")
    ds = build_panoptic_dataset(DatasetConfig(kind="synthia", root=str(tmp_path / "syn")))
    assert isinstance(ds, PanopticSynthiaDataset) and isinstance(ds, SynthiaDataset)
    plain = SynthiaDataset(tmp_path / "syn")
    for i, name in enumerate(ds.names):
        image, sem, expected = files[name]
        assert np.array_equal(ds.load_instances(i), expected)
        img, lab, ins = ds.load_panoptic(i)
        assert ins.dtype == np.int32 and np.array_equal(ins, expected)
        assert np.array_equal(img, image) and np.array_equal(lab, sem)
        assert np.array_equal(lab, plain.load(i)[1])


def test_gta5_and_other_kinds_are_config_errors(tmp_path):
    make_gta5(tmp_path / "gta")
    with pytest.raises(ConfigError, match="no instance labels.*synthia"):
        build_panoptic_dataset(DatasetConfig(kind="gta5", root=str(tmp_path / "gta")))
    with pytest.raises(ConfigError, match="image_list"):
        build_panoptic_dataset(DatasetConfig(kind="image_list", root=str(tmp_path / "x.txt")))


def test_unlabelled_split_has_no_instances(tmp_path):
    _, cfg = _cs(tmp_path, labelled=False)
    ds = build_panoptic_dataset(cfg)
    assert ds.instance_paths is None and ds.load_instances(0) is None
    img, lab, ins = ds.load_panoptic(0)
    assert img.shape == (16, 32, 3) and lab is None and ins is None


def test_missing_instance_file_raise_and_skip(tmp_path, caplog):
    _, cfg = _cs(tmp_path)
    ds = build_panoptic_dataset(cfg)
    missing = _inst_path(ds, 1)
    missing.unlink()
    with pytest.raises(DataError) as e:
        build_panoptic_dataset(cfg)
    assert e.value.path == missing and str(missing) in str(e.value)
    cfg.on_error = "skip"
    with caplog.at_level(logging.WARNING, logger="balda.data"):
        ds = build_panoptic_dataset(cfg)
    assert any(ds.names[1] in r.getMessage() for r in caplog.records)
    j, img, lab, ins = ds.load_panoptic_or_skip(1)
    assert j == 2 and ins is not None
    assert ds.load_or_skip(1)[0] == 2  # the semantic loader skips it too
    # max_items drops the item before the check: nothing is missing then
    cfg.on_error, cfg.max_items = "raise", 1
    assert len(build_panoptic_dataset(cfg)) == 1


def test_instance_size_mismatch_names_the_file(tmp_path):
    _, cfg = _cs(tmp_path)
    ds = build_panoptic_dataset(cfg)
    path = _inst_path(ds, 0)
    Image.fromarray(np.full((16, 30), 7, np.uint16)).save(path)
    with pytest.raises(DataError) as e:
        ds.load_panoptic(0)
    assert e.value.path == path and str(path) in str(e.value) and "30x16" in str(e.value)


def test_instance_on_stuff_pixel_names_the_file(tmp_path):
    _, cfg = _cs(tmp_path)
    ds = build_panoptic_dataset(cfg)
    path = _inst_path(ds, 0)
    raw = np.asarray(Image.open(path)).astype(np.int32)
    label_ids = np.asarray(Image.open(ds.label_paths[0]))
    raw[(label_ids == 7).nonzero()[0][0], (label_ids == 7).nonzero()[1][0]] = 26007  # a car id on road
    Image.fromarray(raw.astype(np.uint16)).save(path)
    with pytest.raises(DataError) as e:
        ds.load_panoptic(0)
    assert e.value.path == path and str(ds.label_paths[0]) in str(e.value) and "not a thing" in str(e.value)
    cfg.on_error = "skip"
    ds = build_panoptic_dataset(cfg)
    assert ds.load_panoptic_or_skip(0)[0] == 1


def test_corrupt_instance_file_is_skipped_with_a_warning(tmp_path, caplog):
    _, cfg = _cs(tmp_path, on_error="skip")
    ds = build_panoptic_dataset(cfg)
    path = _inst_path(ds, 2)
    corrupt_file(path)
    with pytest.raises(DataError) as e:
        ds.load_instances(2)
    assert e.value.path == path
    with caplog.at_level(logging.WARNING, logger="balda.data"):
        j, *_ = ds.load_panoptic_or_skip(2)
    assert j == 0 and any(str(path) in r.getMessage() for r in caplog.records)
    assert 2 in ds._bad and ds.load_panoptic_or_skip(2)[0] == 0
    for i in (0, 1):
        corrupt_file(_inst_path(ds, i))
    ds._bad.clear()
    with pytest.raises(DataError, match="no readable item"):
        ds.load_panoptic_or_skip(0)


def test_synthia_errors_name_the_file(tmp_path):
    make_synthia_panoptic(tmp_path / "syn")
    ds = build_panoptic_dataset(DatasetConfig(kind="synthia", root=str(tmp_path / "syn")))
    one_channel = ds.label_paths[0]
    assert cv2.imwrite(str(one_channel), np.full((16, 32), 3, np.uint16))
    with pytest.raises(DataError) as e:
        ds.load_panoptic(0)
    assert e.value.path == one_channel and "channel" in str(e.value)
    small = ds.label_paths[1]
    assert cv2.imwrite(str(small), np.full((16, 30, 3), 3, np.uint16))
    with pytest.raises(DataError) as e:
        ds.load_panoptic(1)
    assert e.value.path == small and str(ds.image_paths[1]) in str(e.value)


def test_generated_benchmark_in_both_formats(tmp_path):
    params = dict(size=(32, 64), n_source=2, n_target_train=2, n_target_val=1, seed=2, progress=False, workers=1)
    generate_streets(tmp_path / "s", source_format="synthia", **params)
    src = build_panoptic_dataset(DatasetConfig(kind="synthia", root=str(tmp_path / "s" / "source")))
    tgt = build_panoptic_dataset(DatasetConfig(kind="cityscapes", root=str(tmp_path / "s" / "target")))
    cities = ("lindenau", "oakport")
    for ds, key, dom in ((src, "source", "source"), (tgt, "target_train", "target")):
        for i, name in enumerate(ds.names):
            index = int(name) if dom == "source" else int(name.split("_")[1]) * 2 + cities.index(name.split("_")[0])
            img, lab, ins = render_scene(image_rng(2, key, index), dom, (32, 64), with_instances=True)
            got_img, got_lab, got_ins = ds.load_panoptic(i)
            assert np.array_equal(got_img, img) and np.array_equal(got_lab, lab)
            assert np.array_equal(got_ins > 0, ins > 0)
            pairs = np.unique(np.stack([got_ins[ins > 0], ins[ins > 0]], 1), axis=0)
            assert len(pairs) == len(np.unique(ins[ins > 0])) == len(np.unique(got_ins[got_ins > 0]))
