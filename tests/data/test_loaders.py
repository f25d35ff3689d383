import itertools

import numpy as np
import pytest
import torch

from balda.config import Config
from balda.data.datasets import CityscapesDataset, GTA5Dataset
from balda.data.loaders import (
    StepBatchSampler,
    TrainView,
    UDALoader,
    build_train_loader,
    rcs_min_crop_pixels,
    sample_seed,
)
from balda.data.sampling import RareClassSampler
from balda.data.stats import class_pixel_counts
from balda.data.transforms import TrainTransform
from tests.data.fixtures import corrupt_file, make_cityscapes, make_gta5


@pytest.fixture
def trees(tmp_path):
    make_gta5(tmp_path / "gta", ids=(1, 2, 3, 5, 8), size=(16, 24))
    make_cityscapes(tmp_path / "cs", "train", cities={"aachen": 2, "bochum": 2}, size=(16, 32))
    return tmp_path


def test_sampler_concatenated_permutations():
    n, B = 5, 2
    s = StepBatchSampler(n, B, seed=7, stream=0)
    seq = [k[0] for k in itertools.chain.from_iterable(itertools.islice(iter(s), 10))]
    expected = np.concatenate([np.random.default_rng([7, 0, e]).permutation(n) for e in range(4)])
    assert seq == expected[:20].tolist()
    # seeds per (seed, stream, step, j); distinct within and across batches
    keys = s.batch_at(3)
    assert [k[1] for k in keys] == [sample_seed(7, 0, 3, j) for j in range(B)]
    assert len({k[1] for st in range(10) for k in s.batch_at(st)}) == 20
    assert all(k[2] == -1 and len(k) == 3 for k in keys)
    # start_step and streams
    resumed = StepBatchSampler(n, B, seed=7, stream=0, start_step=4)
    assert next(iter(resumed)) == s.batch_at(4)
    other = StepBatchSampler(n, B, seed=7, stream=1)
    assert [other.batch_at(t) for t in range(5)] != [s.batch_at(t) for t in range(5)]


def test_sampler_rcs_keys():
    counts = np.array([[5000, 0], [100, 4000], [0, 9000]])
    rcs = RareClassSampler(counts, temperature=0.5, min_pixels=3000)
    s = StepBatchSampler(3, 4, seed=1, stream=0, rcs=rcs, min_crop_pixels=123)
    for step in (0, 9):
        for j, key in enumerate(s.batch_at(step)):
            c, idx = rcs.sample(np.random.default_rng([1, 0, step, j]))
            assert key == (idx, sample_seed(1, 0, step, j), c, 123)
    with pytest.raises(ValueError, match="RCS statistics"):
        StepBatchSampler(4, 1, 0, 0, rcs=rcs)
    with pytest.raises(ValueError, match="non-empty"):
        StepBatchSampler(0, 1, 0, 0)


def test_train_view_label_filter_and_key(trees):
    ds = GTA5Dataset(trees / "gta")
    tf = TrainTransform(crop=(16, 24), flip=0.0)
    seen = []

    def keep_left_half(index, label):
        seen.append(index)
        out = np.full_like(label, 255)
        out[:, :12] = label[:, :12]
        return out

    view = TrainView(ds, tf, label_filter=keep_left_half)
    item = view[(2, 11, -1)]
    assert seen == [2]
    assert item["index"].dtype == torch.long and item["index"].shape == () and int(item["index"]) == 2
    lab = torch.from_numpy(ds.load_label(2).astype(np.int64))
    assert torch.equal(item["label"][:, :12], lab[:, :12]) and (item["label"][:, 12:] == 255).all()
    assert item["image"].shape == (3, 16, 24) and item["image"].dtype == torch.float32
    # same key -> identical sample
    tf2 = TrainTransform(crop=(8, 8), flip=0.5, jitter=0.2)
    v2 = TrainView(ds, tf2)
    a, b = v2[(1, 99, -1)], v2[(1, 99, -1)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])


def test_train_view_skip(trees):
    corrupt_file(trees / "gta/images/00002.png")
    ds = GTA5Dataset(trees / "gta")
    tf = TrainTransform(crop=(8, 8))
    with pytest.raises(Exception, match="00002.png"):
        TrainView(ds, tf)[(1, 0, -1)]
    assert int(TrainView(ds, tf, on_error="skip")[(1, 0, -1)]["index"]) == 2


def _views(trees):
    tf = TrainTransform(crop=(8, 8), flip=0.5, jitter=0.1)
    src = TrainView(GTA5Dataset(trees / "gta"), tf)
    tgt = TrainView(CityscapesDataset(trees / "cs", "train", labelled=False), tf)
    return src, tgt


def _take(loader, k):
    return [next(loader) for _ in range(k)]


def _assert_same(b1, b2):
    for dom in ("source", "target"):
        for key in ("image", "label", "index"):
            assert torch.equal(b1[dom][key], b2[dom][key]), (dom, key)


@pytest.mark.parametrize("with_rcs", [False, True])
def test_uda_loader_resume_identical(trees, with_rcs):
    src, tgt = _views(trees)
    rcs = None
    if with_rcs:
        rcs = RareClassSampler(class_pixel_counts(src.dataset, progress=False), temperature=0.1, min_pixels=10)
    full = UDALoader(src, tgt, 2, 3, seed=4, rcs=rcs, min_crop_pixels=5)
    ahead = _take(full, 8)
    assert full.step == 8
    for _ in range(2):  # two fresh loaders resumed at step 5
        resumed = UDALoader(src, tgt, 2, 3, seed=4, start_step=5, rcs=rcs, min_crop_pixels=5)
        for b1, b2 in zip(ahead[5:], _take(resumed, 3)):
            _assert_same(b1, b2)
        assert resumed.step == 8
    b = ahead[0]
    assert b["source"]["image"].shape == (2, 3, 8, 8) and b["source"]["label"].shape == (2, 8, 8)
    assert b["target"]["image"].shape == (3, 3, 8, 8) and (b["target"]["label"] == 255).all()
    assert b["source"]["index"].shape == (2,) and b["source"]["label"].dtype == torch.long
    # a different seed gives other batches
    other = _take(UDALoader(src, tgt, 2, 3, seed=5, rcs=rcs), 2)
    assert not all(torch.equal(x["source"]["image"], y["source"]["image"]) for x, y in zip(ahead, other))
    # state dict round trip
    full.load_state_dict({"step": 6})
    _assert_same(next(full), ahead[6])


def test_uda_loader_workers_match_single_process(trees):
    src, tgt = _views(trees)
    single = _take(UDALoader(src, tgt, 2, 2, seed=0, start_step=3), 3)
    workers = UDALoader(src, tgt, 2, 2, seed=0, start_step=3, num_workers=1)
    multi = _take(workers, 3)
    workers.close()
    for b1, b2 in zip(single, multi):
        _assert_same(b1, b2)


def test_build_train_loader(trees):
    cfg = Config()
    d = cfg.data
    d.source.root, d.target.root = str(trees / "gta"), str(trees / "cs")
    d.crop, d.batch_source, d.batch_target, d.num_workers = [8, 8], 2, 1, 0
    cfg.train.progress = False
    loader = build_train_loader(cfg, start_step=2)
    b = next(loader)
    assert loader.step == 3 and (b["target"]["label"] == 255).all()
    assert (b["source"]["label"] != 255).any()

    calls = []

    def only_first_row(index, label):
        calls.append(index)
        out = np.full_like(label, 255)
        out[0] = label[0]
        return out

    d.rcs.enabled, d.rcs.min_pixels, d.rcs.temperature = True, 10, 0.1
    loader = build_train_loader(cfg, target_label_filter=only_first_row, with_target_labels=True)
    b = next(loader)
    assert len(calls) == 1 and (b["target"]["label"] != 255).sum() <= 8
    assert list((trees / "gta" / ".balda_stats").glob("train_*.npz"))
    assert loader.rcs is not None and loader.min_crop_pixels == rcs_min_crop_pixels(3000, [8, 8]) == 1
    # a label filter implies reading the target labels
    b = next(build_train_loader(cfg, target_label_filter=only_first_row))
    assert len(calls) == 2 and (b["target"]["label"] != 255).sum() <= 8


_FORK_AFTER_CV2 = """
import time
import cv2, numpy as np, torch
from torch.utils.data import DataLoader, Dataset
from balda.data.loaders import _worker_init, start_workers

class D(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.from_numpy(cv2.resize(np.random.rand(256, 512, 3).astype(np.float32), (128, 64)))

img = np.random.rand(1024, 2048, 3).astype(np.float32)
for _ in range(3):  # the parent's OpenCV pool threads start ...
    cv2.resize(img, (500, 1500))
time.sleep(1)  # ... and, idle, block on their condition variable
n = cv2.getNumThreads()
it = start_workers(DataLoader(D(), batch_size=2, num_workers=2, worker_init_fn=_worker_init))
assert sum(1 for _ in it) == 2 and cv2.getNumThreads() == n
print("ok")
"""


def test_workers_start_after_the_parent_used_opencv():
    """A regression: a worker forked after the parent's OpenCV pool went idle hung forever in
    ``cv2.setNumThreads`` (:func:`balda.data.loaders.start_workers`)."""
    import os
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-c", _FORK_AFTER_CV2],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # the hang: kill the parent and its workers (they hold the pipes)
        os.killpg(proc.pid, 9)
        proc.communicate()
        raise AssertionError("loader workers hung after the parent used OpenCV") from None
    assert proc.returncode == 0 and out.strip() == "ok", err[-2000:]
