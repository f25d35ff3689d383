"""Annotator and LabelStore: oracle labels, PNG masks + manifest round trip, label_filter."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from balda.active.annotator import Annotator, LabelStore, OracleAnnotator


class FakeDataset:
    def __init__(self, n=3, H=6, W=8, seed=0):
        rng = np.random.default_rng(seed)
        self.names = [f"city/img_{i}" for i in range(n)]
        self.images = [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(n)]
        self.labels = [rng.integers(0, 4, (H, W)).astype(np.uint8) for _ in range(n)]
        for lab in self.labels:
            lab[0, :2] = 255  # void pixels

    def __len__(self):
        return len(self.names)

    def load(self, i):
        return self.images[i], self.labels[i]


def test_oracle_annotator_labels_only_the_mask():
    ds = FakeDataset()
    mask = np.zeros((6, 8), bool)
    mask[0:2, 0:3] = True
    out = OracleAnnotator(ds).annotate(ds.names[1], 1, mask)
    assert out.dtype == np.uint8 and out.shape == (6, 8)
    np.testing.assert_array_equal(out[mask], ds.labels[1][mask])
    assert np.all(out[~mask] == 255)
    with pytest.raises(ValueError):
        OracleAnnotator(ds).annotate(ds.names[1], 1, np.zeros((3, 3), bool))
    assert isinstance(OracleAnnotator(ds), Annotator)


def test_store_round_trip_manifest_and_histograms(tmp_path):
    ds = FakeDataset()
    store = LabelStore(tmp_path / "active", num_classes=4)
    store.set_names(ds.names)
    oracle = OracleAnnotator(ds)
    sel0 = np.zeros((6, 8), bool)
    sel0[0:3, 0:3] = True  # includes two void pixels
    counts, acq = store.apply(0, ds.names[0], sel0, oracle, 0)
    assert acq == 9
    np.testing.assert_array_equal(counts, np.bincount(ds.labels[0][sel0][ds.labels[0][sel0] < 4], minlength=4))
    # Idempotent: applying the same round again changes nothing and reports the same counts.
    counts2, acq2 = store.apply(0, ds.names[0], sel0, oracle, 0)
    assert acq2 == acq and np.array_equal(counts2, counts)
    store.commit_round(0, {"pixels_per_class": counts.tolist(), "acquired_pixels": acq})

    labels, acquired = store.read(ds.names[0])
    assert (tmp_path / "active" / "masks" / "city" / "img_0.png").is_file()
    np.testing.assert_array_equal(labels[sel0], ds.labels[0][sel0])
    assert np.all(labels[~sel0] == 255)
    assert np.all(acquired[sel0] == 1) and np.all(acquired[~sel0] == 0)
    assert store.acquired_mask(ds.names[0])[0, 0]  # void but acquired: never selected again

    # Round 1 overlaps round 0: only the new pixels are counted for round 1.
    sel1 = np.zeros((6, 8), bool)
    sel1[2:5, 2:5] = True
    c1, a1 = store.apply(0, ds.names[0], sel1, oracle, 1)
    new = sel1 & ~sel0
    assert a1 == new.sum()
    np.testing.assert_array_equal(c1, np.bincount(ds.labels[0][new], minlength=4))
    store.commit_round(1, {"pixels_per_class": c1.tolist(), "acquired_pixels": a1})
    _, acquired = store.read(ds.names[0])
    assert np.all(acquired[new] == 2) and np.all(acquired[sel0] == 1)

    fresh = LabelStore(tmp_path / "active", num_classes=4)  # what a loader worker sees
    assert fresh.rounds_done() == [0, 1] and fresh.is_done(1) and not fresh.is_done(2)
    assert fresh.names == ds.names
    np.testing.assert_array_equal(fresh.class_histogram(), counts + c1)
    np.testing.assert_array_equal(fresh.class_histogram(upto_round=0), counts)
    assert set(fresh.round_histograms()) == {0, 1}
    man = fresh.manifest()
    assert man["budget_used"] == acq + a1 and man["labelled_hist"] == (counts + c1).tolist()
    assert not list((tmp_path / "active").rglob(".tmp-*"))  # atomic writes leave no temporaries


def test_label_filter_numpy_torch_resize_and_unlabelled(tmp_path):
    ds = FakeDataset()
    store = LabelStore(tmp_path, num_classes=4)
    # Before any round: everything is ignored.
    assert np.all(store.label_filter(0, ds.labels[0]) == 255)
    store.set_names(ds.names)
    sel = np.zeros((6, 8), bool)
    sel[1:4, 2:6] = True
    store.apply(2, ds.names[2], sel, OracleAnnotator(ds), 0)
    out = store.label_filter(2, ds.labels[2].copy())
    np.testing.assert_array_equal(out, np.where(sel, ds.labels[2], 255))
    t = store.label_filter(2, torch.from_numpy(ds.labels[2]).long())
    assert t.dtype == torch.long and torch.equal(t, torch.from_numpy(np.where(sel, ds.labels[2], 255)).long())
    big = store.label_filter(2, np.zeros((12, 16), np.uint8))  # a resized label: nearest-resized mask
    assert big.shape == (12, 16)
    np.testing.assert_array_equal(big[::2, ::2], np.where(sel, ds.labels[2], 255))
    assert np.all(store.label_filter(1, ds.labels[1]) == 255)  # image never acquired
    assert np.all(store.label_filter(99, ds.labels[1]) == 255)  # unknown index
    # Picklable for data-loader workers.
    clone = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(clone.label_filter(2, ds.labels[2]), out)


def test_selection_round_trip_and_name_mismatch(tmp_path):
    store = LabelStore(tmp_path)
    picks = {3: (np.array([1, 2]), np.array([3, 4])), 0: (np.array([5]), np.array([6]))}
    shapes = {3: (10, 12), 0: (7, 9)}
    store.save_selection(0, picks, shapes, 1, {"budget": 3})
    sel = store.load_selection(0)
    assert sel["radius"] == 1 and sel["info"] == {"budget": 3} and sel["shapes"] == shapes
    for i in picks:
        np.testing.assert_array_equal(sel["picks"][i][0], picks[i][0])
        np.testing.assert_array_equal(sel["picks"][i][1], picks[i][1])
    assert store.load_selection(1) is None
    store.set_names(["a", "b"])
    with pytest.raises(ValueError):
        LabelStore(tmp_path).set_names(["a", "c"])
