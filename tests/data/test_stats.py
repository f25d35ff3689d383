import logging

import numpy as np
import pytest

from balda.data.datasets import CityscapesDataset, GTA5Dataset
from balda.data.io import DataError
from balda.data.stats import cache_paths, class_pixel_counts
from tests.data.fixtures import corrupt_file, make_cityscapes, make_gta5


def expected_counts(exp: dict, k: int = 19) -> np.ndarray:
    return np.stack([np.bincount(exp[n][1].ravel(), minlength=256)[:k] for n in sorted(exp)])


def test_counts_exact_and_cached(tmp_path, monkeypatch):
    exp = make_gta5(tmp_path, ids=(1, 2, 5))
    ds = GTA5Dataset(tmp_path)
    counts = class_pixel_counts(ds, progress=False)
    assert counts.dtype == np.int64 and counts.shape == (3, 19)
    np.testing.assert_array_equal(counts, expected_counts(exp))
    cache = cache_paths(ds)[0]
    assert cache.parent == tmp_path / ".balda_stats" and cache.name.startswith("train_") and cache.is_file()
    assert not list(cache.parent.glob("*.tmp*"))

    # second call: a cache hit, no label (nor image) is read
    ds2 = GTA5Dataset(tmp_path)

    def boom(*a, **k):
        raise AssertionError("re-read a file")

    monkeypatch.setattr(ds2, "load_label", boom)
    monkeypatch.setattr(ds2, "load_image", boom)
    np.testing.assert_array_equal(class_pixel_counts(ds2, progress=False), counts)


def test_cache_invalidated_when_dataset_changes(tmp_path):
    make_gta5(tmp_path, ids=(1, 2))
    c1 = class_pixel_counts(GTA5Dataset(tmp_path), progress=False)
    exp = make_gta5(tmp_path, ids=(3,), seed=5)
    ds = GTA5Dataset(tmp_path)
    c2 = class_pixel_counts(ds, progress=False)
    assert c2.shape == (3, 19)
    np.testing.assert_array_equal(c2[:2], c1)
    np.testing.assert_array_equal(c2[2], expected_counts(exp)[0])
    assert len(list((tmp_path / ".balda_stats").glob("*.npz"))) == 2
    # fewer classes -> other key
    assert class_pixel_counts(ds, num_classes=5, progress=False).shape == (3, 5)


def test_corrupt_cache_recomputed(tmp_path, caplog):
    exp = make_gta5(tmp_path, ids=(1, 2))
    ds = GTA5Dataset(tmp_path)
    class_pixel_counts(ds, progress=False)
    cache_paths(ds)[0].write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="balda.data"):
        np.testing.assert_array_equal(class_pixel_counts(ds, progress=False), expected_counts(exp))
    assert "garbage" not in caplog.text and ".balda_stats" in caplog.text


def test_fallback_when_root_not_writable(tmp_path):
    root = tmp_path / "data"
    exp = make_gta5(root, ids=(1,))
    (root / ".balda_stats").write_text("a file where the cache folder should be")
    ds = GTA5Dataset(root)
    home = tmp_path / "home"
    counts = class_pixel_counts(ds, progress=False, cache_dir=home)
    np.testing.assert_array_equal(counts, expected_counts(exp))
    files = list(home.glob("gta5_train_*.npz"))
    assert len(files) == 1
    ds.load_label = None  # a cache hit from the fallback folder must not read labels
    np.testing.assert_array_equal(class_pixel_counts(ds, progress=False, cache_dir=home), counts)


def test_default_fallback_is_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    make_gta5(tmp_path / "d", ids=(1,))
    paths = cache_paths(GTA5Dataset(tmp_path / "d"))
    assert paths[1].parent == tmp_path / "h" / ".cache" / "balda"


def test_no_cache_and_progress_bar(tmp_path):
    exp = make_cityscapes(tmp_path, "train", train_ids=True)
    ds = CityscapesDataset(tmp_path, "train")
    counts = class_pixel_counts(ds, cache=False, progress=True)
    np.testing.assert_array_equal(counts, expected_counts(exp))
    assert not (tmp_path / ".balda_stats").exists()


def test_unlabelled_and_unreadable(tmp_path, caplog):
    make_gta5(tmp_path, ids=(1, 2))
    with pytest.raises(DataError, match="unlabelled"):
        class_pixel_counts(GTA5Dataset(tmp_path, labelled=False), progress=False)
    corrupt_file(tmp_path / "labels/00002.png")
    with pytest.raises(DataError, match="00002.png"):
        class_pixel_counts(GTA5Dataset(tmp_path), cache=False, progress=False)
    with caplog.at_level(logging.WARNING, logger="balda.data"):
        counts = class_pixel_counts(GTA5Dataset(tmp_path, on_error="skip"), cache=False, progress=False)
    assert (counts[1] == 0).all() and counts[0].sum() > 0 and "00002" in caplog.text
