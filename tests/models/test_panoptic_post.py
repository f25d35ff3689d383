"""Panoptic-DeepLab post-processing on hand-built maps with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from balda.data.panoptic import VOID_ID, encode_panoptic, panoptic_targets
from balda.models.panoptic_post import (
    PanopticPostProcess,
    find_instance_centers,
    group_pixels,
    panoptic_post_process,
    scale_area,
)


def test_center_nms_threshold_and_top_k():
    z = torch.zeros(30, 30)
    z[5, 5] = 0.9
    z[5, 8] = 0.5  # within 3 px of a higher peak: suppressed by the 7x7 max-pool
    z[5, 15] = 0.7  # 10 px away: its own peak
    z[20, 20] = 0.08  # a peak below the 0.1 threshold
    z[25, 5] = 0.3
    yx, scores = find_instance_centers(z)
    assert yx.tolist() == [[5, 5], [5, 15], [25, 5]]
    np.testing.assert_allclose(scores.numpy(), [0.9, 0.7, 0.3])
    yx2, _ = find_instance_centers(z[None], top_k=2)
    assert yx2.tolist() == [[5, 5], [5, 15]]
    yx3, _ = find_instance_centers(z, threshold=0.05)
    assert [20, 20] in yx3.tolist()


def test_group_pixels_nearest_predicted_centre():
    mask = torch.zeros(10, 20, dtype=torch.bool)
    mask[2:5, 2:6] = True
    mask[2:5, 12:16] = True
    centers = torch.tensor([[3, 4], [3, 14]])
    ys, xs = torch.meshgrid(torch.arange(10.0), torch.arange(20.0), indexing="ij")
    offset = torch.stack([3 - ys, torch.where(xs < 10, 4 - xs, 14 - xs)])
    offset[:, 2, 2] = torch.tensor([1.0, 11.0])  # this pixel's offset points at the right centre
    ins = group_pixels(mask, offset, centers, chunk=7)  # tiny chunks exercise the chunked path
    exp = torch.zeros(10, 20, dtype=torch.long)
    exp[2:5, 2:6] = 1
    exp[2:5, 12:16] = 2
    exp[2, 2] = 2
    assert torch.equal(ins, exp)


def _two_cars():
    sem = torch.zeros(32, 48, dtype=torch.long)  # road
    sem[0:4, :] = 10  # sky strip: 192 px
    sem[8:16, 4:14] = 13  # car A, centre (11.5, 8.5)
    sem[8:16, 24:36] = 13  # car B, centre (11.5, 29.5)
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(48.0), indexing="ij")
    offset = torch.zeros(2, 32, 48)
    a = sem == 13
    left = a & (xs < 20)
    right = a & (xs >= 20)
    offset[0][a] = (11.5 - ys)[a]
    offset[1][left] = (8.5 - xs)[left]
    offset[1][right] = (29.5 - xs)[right]
    center = torch.zeros(32, 48)
    center[11, 8] = 0.95  # predicted centres near the true ones
    center[12, 30] = 0.8
    return sem, center, offset


def test_two_instances_grouped_with_stuff():
    sem, center, offset = _two_cars()
    pan, segs = panoptic_post_process(sem, center, offset, stuff_area=100)
    assert pan.dtype == torch.int64 and pan.shape == sem.shape
    assert (pan[8:16, 4:14] == 13001).all() and (pan[8:16, 24:36] == 13002).all()
    assert (pan[0:4] == 10000).all() and pan[20, 0] == 0
    byid = {s["id"]: s for s in segs}
    assert set(byid) == {13001, 13002, 0, 10000}
    assert byid[13001]["area"] == 80 and byid[13002]["area"] == 96 and byid[13001]["center"] == [11, 8]
    assert byid[13001]["isthing"] and not byid[0]["isthing"]
    assert byid[0]["area"] == 32 * 48 - 192 - 176


def test_stuff_area_and_thing_area_filters():
    sem, center, offset = _two_cars()
    pan, segs = panoptic_post_process(sem, center, offset, stuff_area=193, thing_area=90)
    assert (pan[0:4] == VOID_ID).all()  # sky has 192 < 193 px
    assert (pan[8:16, 4:14] == VOID_ID).all()  # car A has 80 < 90 px
    assert (pan[8:16, 24:36] == 13002).all()
    assert {s["id"] for s in segs} == {13002, 0}


def test_majority_vote_sets_instance_class():
    sem, center, offset = _two_cars()
    sem[8:11, 24:36] = 14  # 36 truck px vs 60 car px in instance B
    sem[8:14, 4:14] = 14  # 60 truck px vs 20 car px in instance A
    pan, _ = panoptic_post_process(sem, center, offset, stuff_area=1)
    assert (pan[8:16, 24:36] == 13002).all()
    assert (pan[8:16, 4:14] == 14001).all()


def test_logits_batched_and_no_centres():
    sem, center, offset = _two_cars()
    logits = torch.nn.functional.one_hot(sem, 19).permute(2, 0, 1).float()
    pan1, segs1 = panoptic_post_process(logits, center[None], offset, stuff_area=100)
    pan2, segs2 = panoptic_post_process(sem, center, offset, stuff_area=100)
    assert torch.equal(pan1, pan2) and segs1 == segs2
    empty = torch.zeros_like(center)
    panb, segsb = panoptic_post_process(
        torch.stack([logits, logits]),
        torch.stack([center, empty])[:, None],
        torch.stack([offset, offset]),
        stuff_area=100,
    )
    assert panb.shape == (2, 32, 48) and torch.equal(panb[0], pan2) and segsb[0] == segs2
    assert (panb[1][sem == 13] == VOID_ID).all()  # no centre: thing pixels stay void
    assert {s["id"] for s in segsb[1]} == {0, 10000}
    with pytest.raises(ValueError):
        panoptic_post_process(sem, center, offset[:1])


def test_targets_round_trip_and_scaling():
    sem = np.zeros((64, 64), np.uint8)
    ins = np.zeros((64, 64), np.int32)
    sem[10:20, 10:25], ins[10:20, 10:25] = 11, 5
    sem[30:50, 30:40], ins[30:50, 30:40] = 13, 9
    sem[40:60, 5:20], ins[40:60, 5:20] = 13, 2
    t = panoptic_targets(sem, ins, sigma=4.0)
    pp = PanopticPostProcess(stuff_area=2048)
    assert pp.areas_for((64, 64)) == (scale_area(2048, (64, 64)), 0) == (4, 0)
    assert scale_area(2048, (512, 1024)) == 512 and scale_area(2048, (1024, 2048)) == 2048
    pan, _ = pp(torch.as_tensor(sem), torch.as_tensor(t["center"]), torch.as_tensor(t["offset"]))
    gt = encode_panoptic(sem, ins)
    # same partition, same classes (instance numbers may differ)
    pairs = set(zip(gt.ravel().tolist(), pan.numpy().ravel().tolist()))
    assert len(pairs) == len(np.unique(gt)) == len(torch.unique(pan))
    assert all(g // 1000 == p // 1000 for g, p in pairs)
