"""Exact parallel greedy == sequential greedy; non-overlap; exact budget; labelled pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from balda.active.select import greedy_select_parallel, greedy_select_sequential, regions_to_mask


def _random_map(rng: np.random.Generator, H: int, W: int, kind: str) -> np.ndarray:
    if kind == "ties":  # few distinct values: ties everywhere
        return rng.integers(0, 4, (H, W)).astype(np.float32)
    if kind == "smooth":
        s = rng.random((H, W))
        return (s + np.roll(s, 1, 0) + np.roll(s, 1, 1)).astype(np.float32)
    if kind == "constant":
        return np.ones((H, W), np.float32)
    return rng.random((H, W)).astype(np.float32)


@pytest.mark.parametrize("kind", ["random", "ties", "smooth", "constant"])
def test_parallel_equals_sequential_on_random_maps(kind):
    rng = np.random.default_rng(["random", "ties", "smooth", "constant"].index(kind))
    for trial in range(100):
        H, W = int(rng.integers(1, 14)), int(rng.integers(1, 17))
        s = _random_map(rng, H, W, kind)
        labelled = rng.random((H, W)) < rng.choice([0.0, 0.1, 0.5])
        if trial % 5 == 0:
            s[rng.random((H, W)) < 0.1] = -np.inf
        if trial % 7 == 0:
            s[rng.random((H, W)) < 0.1] = np.nan
        r = int(rng.integers(0, 4))
        n = [None, 1, 3, 10, 1000][trial % 5]
        ys, xs = greedy_select_parallel(torch.from_numpy(s), r, n, torch.from_numpy(labelled))
        ys_ref, xs_ref = greedy_select_sequential(s, r, n, labelled)
        np.testing.assert_array_equal(ys.numpy(), ys_ref, err_msg=f"{kind} trial {trial} r={r} n={n}")
        np.testing.assert_array_equal(xs.numpy(), xs_ref)


def test_worst_case_ramp_and_scores_descending():
    H, W = 9, 11
    s = torch.arange(H * W, dtype=torch.float32).view(H, W)  # one window-maximum per step
    ys, xs, sc = greedy_select_parallel(s, 1, None, return_scores=True)
    ys_ref, xs_ref = greedy_select_sequential(s, 1, None)
    np.testing.assert_array_equal(ys.numpy(), ys_ref)
    np.testing.assert_array_equal(xs.numpy(), xs_ref)
    assert torch.all(sc[:-1] >= sc[1:])
    assert torch.equal(sc, s[ys, xs])


@pytest.mark.parametrize("k", [1, 2])
def test_regions_do_not_overlap_and_budget_is_exact(k):
    rng = np.random.default_rng(k)
    H, W = 40, 50
    s = torch.from_numpy(rng.random((H, W)).astype(np.float32))
    labelled = torch.from_numpy(rng.random((H, W)) < 0.05)
    n = 12
    ys, xs = greedy_select_parallel(s, 2 * k, n, labelled)
    assert len(ys) == n
    assert not labelled[ys, xs].any()  # never re-select labelled pixels
    total = torch.zeros(H, W, dtype=torch.int32)
    for y, x in zip(ys.tolist(), xs.tolist()):
        total += regions_to_mask([y], [x], k, (H, W)).int()
    assert int(total.max()) == 1  # windows pairwise disjoint
    assert torch.equal(total.bool(), regions_to_mask(ys, xs, k, (H, W)))


def test_regions_to_mask_reference_and_borders():
    H, W = 6, 7
    ys, xs = [0, 5, 3], [0, 6, 3]
    m = regions_to_mask(ys, xs, 1, (H, W))
    ref = np.zeros((H, W), bool)
    for y, x in zip(ys, xs):
        ref[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2] = True
    np.testing.assert_array_equal(m.numpy(), ref)
    assert regions_to_mask([], [], 1, (H, W)).sum() == 0
    assert int(regions_to_mask(ys, xs, 0, (H, W)).sum()) == 3


def test_edge_cases():
    s = torch.rand(5, 5)
    ys, xs = greedy_select_parallel(s, 1, 0)
    assert len(ys) == 0
    ys, xs = greedy_select_parallel(s, 1, 3, torch.ones(5, 5, dtype=torch.bool))
    assert len(ys) == 0
    # Candidates run out: fewer than n picks, all of them.
    ys, xs = greedy_select_parallel(s, 10, 5)
    assert len(ys) == 1 and (int(ys[0]), int(xs[0])) == divmod(int(s.argmax()), 5)


@pytest.mark.parametrize("radius", [1, 3, 7, 12, 40])
def test_window_max_matches_reference(radius):
    from balda.active.select import _window_max

    rng = np.random.default_rng(radius)
    x = rng.random((9, 23)).astype(np.float32)
    x[rng.random(x.shape) < 0.2] = -1.0
    got = _window_max(torch.from_numpy(x), radius).numpy()
    ref = np.array(
        [
            [x[max(0, y - radius) : y + radius + 1, max(0, c - radius) : c + radius + 1].max() for c in range(23)]
            for y in range(9)
        ]
    )
    np.testing.assert_array_equal(got, ref)
    # Large suppression radius (the VHGW path) also agrees with the sequential greedy.
    s = torch.from_numpy(rng.integers(0, 5, (30, 40)).astype(np.float32))
    ys, xs = greedy_select_parallel(s, radius, None)
    ys_ref, xs_ref = greedy_select_sequential(s, radius, None)
    np.testing.assert_array_equal(ys.numpy(), ys_ref)
    np.testing.assert_array_equal(xs.numpy(), xs_ref)


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_rank_prefix_cut_inside_ties_is_exact(levels):
    """Maps with few distinct scores, large enough that the rank prefix (n (2s+1)^2 candidates) is
    cut inside a run of ties: still the sequential greedy's picks (ties by flat index)."""
    rng = np.random.default_rng(levels)
    for r, n in [(1, 4), (2, 7), (0, 30)]:
        s = rng.integers(0, levels, (48, 64)).astype(np.float32)
        ys, xs = greedy_select_parallel(torch.from_numpy(s), r, n)
        ys_ref, xs_ref = greedy_select_sequential(s, r, n)
        np.testing.assert_array_equal(ys.numpy(), ys_ref)
        np.testing.assert_array_equal(xs.numpy(), xs_ref)
