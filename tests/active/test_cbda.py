"""CBDA: class weights, re-weighted scores, dynamic global selection, balance vs RIPU."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from balda.active.cbda import class_weights, dynamic_select, global_top_k, kl_to_uniform, reweight_scores
from balda.active.select import greedy_select_parallel, regions_to_mask


# ------------------------------------------------------------------------------- class weights
def test_power_weights_formula_mean_one_and_clip():
    counts = np.array([600.0, 300.0, 80.0, 20.0])
    f = counts / counts.sum()
    w = class_weights(counts, "power", alpha=0.5, clip=None, eps=1e-4)
    ref = (f + 1e-4) ** -0.5
    np.testing.assert_allclose(w.numpy(), ref / ref.mean(), rtol=1e-6)
    assert abs(float(w.mean()) - 1) < 1e-6
    assert torch.all(w[:-1] < w[1:])  # rarer class, larger weight
    wc = class_weights(np.array([1e6, 1.0, 0.0]), "power", alpha=1.0, clip=(0.2, 5.0))
    assert float(wc.min()) >= 0.2 and float(wc.max()) <= 5.0
    assert float(wc[0]) == pytest.approx(0.2)
    wc = class_weights(np.array([100.0] * 10 + [0.0]), "power", alpha=1.0, clip=(0.2, 5.0))
    assert float(wc[-1]) == pytest.approx(5.0)  # an absent class among ten equal ones hits the upper clip


def test_alternative_weights_and_uniform():
    counts = np.array([500.0, 100.0, 0.0, 10.0])
    f = counts / counts.sum()
    med = np.median(f[f > 0])
    ref = med / (f + 1e-4)
    np.testing.assert_allclose(class_weights(counts, "median_freq", clip=None).numpy(), ref / ref.mean(), rtol=1e-5)
    beta = 0.99
    ref = (1 - beta) / (1 - beta ** np.maximum(counts, 1))
    np.testing.assert_allclose(
        class_weights(counts, "effective_number", clip=None, beta=beta).numpy(), ref / ref.mean(), rtol=1e-5
    )
    assert torch.equal(class_weights(np.zeros(5)), torch.ones(5))
    with pytest.raises(ValueError):
        class_weights(counts, "nope")


def test_reweight_center_and_region_against_reference():
    g = torch.Generator().manual_seed(0)
    score = torch.rand(6, 7, generator=g)
    score[0, 0] = float("-inf")
    pred = torch.randint(0, 3, (6, 7), generator=g)
    w = torch.tensor([0.5, 1.0, 3.0])
    c = reweight_scores(score, pred, w, "center")
    np.testing.assert_allclose(c.numpy(), (score * w[pred]).numpy())
    r = reweight_scores(score, pred, w, "region", radius=1)
    ref = np.zeros((6, 7))
    wp = w[pred].numpy()
    for y in range(6):
        for x in range(7):
            ref[y, x] = score[y, x].item() * wp[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2].mean()
    np.testing.assert_allclose(r.numpy(), ref, rtol=1e-5)
    assert r[0, 0] == float("-inf")


# ---------------------------------------------------------------------------- dynamic selection
def test_global_top_k_prefixes_and_ties():
    lists = [torch.tensor([5.0, 3.0, 3.0]), torch.tensor([3.0, 1.0]), torch.tensor([]), torch.tensor([4.0])]
    assert global_top_k(lists, 2).tolist() == [1, 0, 0, 1]
    assert global_top_k(lists, 3).tolist() == [2, 0, 0, 1]  # tie at 3.0: lower image index first
    assert global_top_k(lists, 4).tolist() == [3, 0, 0, 1]
    assert global_top_k(lists, 5).tolist() == [3, 1, 0, 1]
    assert global_top_k(lists, 100).tolist() == [3, 2, 0, 1]


def _maps(seed, n=5, H=20, W=24):
    rng = np.random.default_rng(seed)
    # Images differ in how good their candidates are, so the global choice is uneven.
    return [torch.from_numpy((rng.random((H, W)) * rng.uniform(0.2, 1.0)).astype(np.float32)) for _ in range(n)]


@pytest.mark.parametrize("factor", [0.5, 1.0, 4.0])
def test_dynamic_select_budget_exact_no_overlap_and_equals_global_greedy(factor):
    maps = _maps(1)
    labelled = [torch.rand(m.shape, generator=torch.Generator().manual_seed(i)) < 0.1 for i, m in enumerate(maps)]
    n_i, K = 6, 30
    calls = []

    def extract(i, m):
        calls.append((i, m))
        return greedy_select_parallel(maps[i], 2, m, labelled[i], return_scores=True)

    quota = [max(1, math.ceil(factor * n_i))] * len(maps)
    res = dynamic_select(extract, len(maps), K, quota, max_passes=10)
    assert res.selected == K and res.shortfall == 0 and res.saturated == 0
    assert sum(len(p[0]) for p in res.picks.values()) == K
    # Reference: global top-K over each image's complete greedy list.
    full = [greedy_select_parallel(m, 2, None, lm, return_scores=True) for m, lm in zip(maps, labelled)]
    counts = global_top_k([f[2] for f in full], K)
    for i, f in enumerate(full):
        got = res.picks.get(i, (np.zeros(0), np.zeros(0)))
        np.testing.assert_array_equal(got[0], f[0][: counts[i]].numpy())
        np.testing.assert_array_equal(got[1], f[1][: counts[i]].numpy())
        if len(got[0]):
            mask_sum = sum(regions_to_mask([y], [x], 1, maps[i].shape).int() for y, x in zip(*got))
            assert int(mask_sum.max()) == 1  # regions of one image never overlap
            assert not labelled[i][torch.as_tensor(got[0]), torch.as_tensor(got[1])].any()
    if factor < 1:
        assert res.passes > 1 and res.reextracted > 0  # redistribution happened
        assert len(calls) > len(maps)


def test_dynamic_select_shortfall_when_candidates_run_out():
    maps = [torch.rand(5, 5), torch.rand(5, 5)]
    res = dynamic_select(
        lambda i, m: greedy_select_parallel(maps[i], 2, m, return_scores=True), 2, 50, [3, 3], max_passes=5
    )
    available = sum(len(greedy_select_parallel(m, 2, None)[0]) for m in maps)
    assert res.selected == available and res.shortfall == 50 - available  # every candidate taken
    assert res.saturated == 0


# -------------------------------------------------------------------------- balance vs RIPU
def _scene(seed, n=6, H=40, W=48):
    """Fixed prediction maps (ground truth = prediction) and scores: a frequent class 0, a medium
    class 1, rarer blobs of classes 2 and 3; scores favour the frequent classes, as RIPU tends to."""
    rng = np.random.default_rng(seed)
    preds, scores = [], []
    for _ in range(n):
        p = np.zeros((H, W), np.int64)
        p[: H // 3] = 1
        for c, count, size in [(2, int(rng.integers(1, 6)), 5), (3, int(rng.integers(0, 5)), 3)]:
            for _ in range(count):
                y, x = rng.integers(0, H - size), rng.integers(0, W - size)
                p[y : y + size, x : x + size] = c
        s = rng.random((H, W)) * np.where(p <= 1, 1.0, 0.6)
        preds.append(torch.from_numpy(p))
        scores.append(torch.from_numpy(s.astype(np.float32)))
    return preds, scores


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("variant", ["center", "region"])
def test_cbda_labelled_set_more_balanced_than_ripu(seed, variant):
    K = 4
    preds, scores = _scene(seed)
    H, W = preds[0].shape
    n_i = math.ceil(H * W * 0.05 / 9)  # 5% budget of 3x3 regions per image

    def hist(picks):
        h = np.zeros(K, np.int64)
        for i, (ys, xs) in picks.items():
            h += np.bincount(preds[i][regions_to_mask(ys, xs, 1, (H, W))].numpy(), minlength=K)
        return h

    ripu = {i: greedy_select_parallel(s, 2, n_i) for i, s in enumerate(scores)}
    # First round: weights from the predicted-class frequencies.
    freq = np.bincount(torch.cat([p.reshape(-1) for p in preds]).numpy(), minlength=K)
    w = class_weights(freq, "power", alpha=0.5, clip=(0.2, 5.0))
    ws = [reweight_scores(s, p, w, variant, 1) for s, p in zip(scores, preds)]
    res = dynamic_select(
        lambda i, m: greedy_select_parallel(ws[i], 2, m, return_scores=True),
        len(ws),
        n_i * len(ws),
        [4 * n_i] * len(ws),
    )
    assert res.selected == n_i * len(ws) == sum(len(r[0]) for r in ripu.values())  # same budget
    h_ripu, h_cbda = hist(ripu), hist(res.picks)
    assert kl_to_uniform(h_cbda) < kl_to_uniform(h_ripu)
    assert h_cbda.min() / h_cbda.sum() > h_ripu.min() / h_ripu.sum()


def test_kl_to_uniform():
    assert kl_to_uniform([5, 5, 5]) == pytest.approx(0.0)
    assert kl_to_uniform([1, 0, 0]) == pytest.approx(math.log(3))
