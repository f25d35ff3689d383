"""acquire_round end to end with a tiny model and a tiny fake target set; resume; plots."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from balda.active.acquire import acquire_round, per_image_budget, plot_round, round_budget, score_image
from balda.active.annotator import LabelStore, OracleAnnotator
from balda.active.select import greedy_select_parallel, regions_to_mask
from balda.config import ActiveConfig, CBDAConfig
from balda.models.base import Segmentor, SegOutput

K = 4
MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


class TinySeg(Segmentor):
    """Stride-2 conv backbone + 1x1 classifier: logits at half resolution (upsampled by acquisition)."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.num_classes = K
        self.feature_channels = 8
        self.backbone = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.decode_head = nn.Conv2d(8, K, 1)

    def forward(self, x):
        f = torch.relu(self.backbone(x))
        return SegOutput(f, self.decode_head(f) * 3)


class FakeTarget:
    """len / names / load(i) -> (uint8 HxWx3 image, uint8 HxW trainIds with some void)."""

    def __init__(self, n=5, H=24, W=32, seed=0):
        rng = np.random.default_rng(seed)
        self.names = [f"img_{i:02d}" for i in range(n)]
        self.images = [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(n)]
        self.labels = []
        for _ in range(n):
            lab = np.zeros((H, W), np.uint8)
            lab[: H // 3] = 1
            for c in (2, 3):
                y, x = rng.integers(0, H - 4), rng.integers(0, W - 4)
                lab[y : y + 4, x : x + 4] = c
            lab[-2:] = 255
            self.labels.append(lab)

    def __len__(self):
        return len(self.names)

    def load(self, i):
        return self.images[i], self.labels[i]


def _cfg(**kw):
    cbda = kw.pop("cbda", CBDAConfig())
    base = dict(enabled=True, selection="ripu", mode="region", budget=0.1, rounds=[0.25, 0.5], radius=1, pixel_radius=3)
    base.update(kw)
    return ActiveConfig(**base, cbda=cbda)


def _masks(store, ds):
    return {n: tuple(None if a is None else a.copy() for a in store.read(n)) for n in ds.names}


def _run(tmp, ds, cfg, rounds=(0,), model=None, **kw):
    store = LabelStore(tmp, num_classes=K)
    model = model or TinySeg()
    out = [
        acquire_round(
            model, ds, store, cfg, r, len(cfg.rounds), MEAN, STD, "cpu", OracleAnnotator(ds), progress=False, **kw
        )
        for r in rounds
    ]
    return store, out


def test_ripu_region_round_end_to_end(tmp_path):
    ds, cfg = FakeTarget(), _cfg()
    model = TinySeg()
    model.train()
    store, (stats,) = _run(tmp_path, ds, cfg, model=model)
    assert model.training  # mode restored
    n_i = per_image_budget(cfg, 2, 24, 32)
    assert n_i == math.ceil(24 * 32 * 0.1 / 2 / 9)
    assert stats["picks"] == stats["budget"] == n_i * len(ds) and stats["shortfall"] == 0
    assert store.is_done(0) and stats["resumed"] is False
    sel = store.load_selection(0)
    # Reference pipeline for image 0: upsampled logits -> RIPU scores -> greedy.
    with torch.no_grad():
        x = (
            torch.from_numpy(ds.images[0]).permute(2, 0, 1)[None].float() - torch.tensor(MEAN).view(1, 3, 1, 1)
        ) / torch.tensor(STD).view(1, 3, 1, 1)
        logits = nn.functional.interpolate(model(x).logits, size=(24, 32), mode="bilinear", align_corners=False)
    ys, xs = greedy_select_parallel(score_image(logits, cfg), 2, n_i)
    np.testing.assert_array_equal(sel["picks"][0][0], ys.numpy())
    np.testing.assert_array_equal(sel["picks"][0][1], xs.numpy())
    total_acq, hist = 0, np.zeros(K, np.int64)
    for i, name in enumerate(ds.names):
        labels, acq = store.read(name)
        ys, xs = sel["picks"][i]
        windows = sum(regions_to_mask([y], [x], 1, (24, 32)).int() for y, x in zip(ys, xs))
        assert int(windows.max()) == 1  # non-overlapping regions
        np.testing.assert_array_equal(acq > 0, windows.bool().numpy())
        np.testing.assert_array_equal(labels, np.where(acq > 0, ds.labels[i], 255))
        total_acq += int((acq > 0).sum())
        lab = labels[labels < K]
        hist += np.bincount(lab, minlength=K)
    assert stats["acquired_pixels"] == total_acq
    assert stats["pixels_per_class"] == hist.tolist() == store.class_histogram().tolist()
    assert stats["labelled_pixels"] == hist.sum()


def test_resume_returns_stats_and_identical_masks(tmp_path):
    ds, cfg = FakeTarget(), _cfg()
    store, (stats,) = _run(tmp_path / "a", ds, cfg)
    before = _masks(store, ds)

    class Boom(TinySeg):
        def forward(self, x):
            raise AssertionError("a finished round must not be recomputed")

    again = acquire_round(
        Boom(), ds, LabelStore(tmp_path / "a", num_classes=K), cfg, 0, 2, MEAN, STD, "cpu", progress=False
    )
    assert again["resumed"] is True
    assert {k: v for k, v in again.items() if k != "resumed"} == {k: v for k, v in stats.items() if k != "resumed"}
    for n, (lab, acq) in _masks(store, ds).items():
        assert np.array_equal(lab, before[n][0]) and np.array_equal(acq, before[n][1])

    # A crash while annotating: the re-run re-applies the saved selection and ends identical.
    class Flaky(OracleAnnotator):
        calls = 0

        def annotate(self, name, index, mask):
            Flaky.calls += 1
            if Flaky.calls == 3:
                raise RuntimeError("annotator crashed")
            return super().annotate(name, index, mask)

    crash_store = LabelStore(tmp_path / "b", num_classes=K)
    with pytest.raises(RuntimeError):
        acquire_round(TinySeg(), ds, crash_store, cfg, 0, 2, MEAN, STD, "cpu", Flaky(ds), progress=False)
    assert not crash_store.is_done(0) and crash_store.load_selection(0) is not None
    resumed = acquire_round(Boom(), ds, crash_store, cfg, 0, 2, MEAN, STD, "cpu", progress=False)
    assert resumed["pixels_per_class"] == stats["pixels_per_class"]
    assert resumed["acquired_pixels"] == stats["acquired_pixels"]
    for n, (lab, acq) in _masks(crash_store, ds).items():
        assert np.array_equal(lab, before[n][0]) and np.array_equal(acq, before[n][1])


def test_second_round_never_reselects_and_accumulates(tmp_path):
    ds, cfg = FakeTarget(), _cfg()
    store, (s0, s1) = _run(tmp_path, ds, cfg, rounds=(0, 1))
    sel1 = store.load_selection(1)
    for i, name in enumerate(ds.names):
        _, acq = store.read(name)
        ys, xs = sel1["picks"][i]
        assert np.all(acq[ys, xs] == 2)  # round-1 centres were unlabelled before round 1
        assert set(np.unique(acq)) <= {0, 1, 2}
    hist = np.asarray(s0["pixels_per_class"]) + np.asarray(s1["pixels_per_class"])
    assert store.class_histogram().tolist() == hist.tolist()
    assert store.manifest()["budget_used"] == s0["acquired_pixels"] + s1["acquired_pixels"]
    assert 0 < s1["budget_used"] <= 0.2 + 1e-9


@pytest.mark.parametrize("class_balance", [True, False])
def test_cbda_dynamic_honours_global_budget(tmp_path, class_balance):
    ds = FakeTarget(n=6)
    cfg = _cfg(selection="cbda", cbda=CBDAConfig(class_balance=class_balance, dynamic=True, candidates_factor=2.0))
    store, (s0, s1) = _run(tmp_path, ds, cfg, rounds=(0, 1), prior_images=3)
    K_round = round_budget(cfg, 2, 6 * 24 * 32, 6)
    for r, st in enumerate((s0, s1)):
        assert st["picks"] == st["budget"] == K_round and st["shortfall"] == 0
        sel = store.load_selection(r)
        assert sum(len(p[0]) for p in sel["picks"].values()) == K_round
        for _i, (ys, xs) in sel["picks"].items():
            windows = sum(regions_to_mask([y], [x], 1, (24, 32)).int() for y, x in zip(ys, xs))
            assert int(windows.max()) == 1
    if class_balance:
        assert s0["weights_from"] == "predicted" and s1["weights_from"] == "labelled"
        assert len(s1["class_weights"]) == K
    else:
        assert s0["class_weights"] is None


def test_cbda_per_image_and_pixel_mode(tmp_path):
    ds = FakeTarget(n=3)
    cfg = _cfg(selection="cbda", mode="pixel", budget=4, cbda=CBDAConfig(dynamic=False))
    store, (st,) = _run(tmp_path / "p", ds, cfg, prior_images=0)
    assert st["weights_from"] == "uniform"
    assert st["picks"] == 3 * 2 and st["acquired_pixels"] == 6  # 4 px per image over 2 rounds
    cfg = _cfg(mode="pixel", budget=4)
    store, (st,) = _run(tmp_path / "q", ds, cfg)
    sel = store.load_selection(0)
    for ys, xs in sel["picks"].values():
        assert len(ys) == 2 and max(abs(ys[0] - ys[1]), abs(xs[0] - xs[1])) > 3  # suppression radius


def test_plot_round(tmp_path):
    ds, cfg = FakeTarget(n=3), _cfg()
    store, _ = _run(tmp_path / "s", ds, cfg, rounds=(0, 1))
    path = plot_round(store, ds, tmp_path / "plots" / "round.png", n=2)
    assert path.is_file() and path.stat().st_size > 1000
    empty = plot_round(LabelStore(tmp_path / "none", num_classes=K), ds, tmp_path / "empty.png")
    assert empty.is_file()
