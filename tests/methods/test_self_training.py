import copy

import pytest
import torch
import torch.nn.functional as F

from balda.methods.augment import classmix_masks, step_generator
from balda.methods.losses import weighted_cross_entropy
from balda.methods.self_training import (
    SelfTrainingConfig,
    SelfTrainingStrategy,
    downscale_label_ratio,
    ema_alpha,
    ema_update,
    mixed_targets,
    pseudo_label,
)

from .conftest import MEAN, STD, K, RecordingWeighting, make_batch, make_model


def _strategy(model, weighting=None, seed=0, **cfg_kw):
    return SelfTrainingStrategy(model, weighting, SelfTrainingConfig(**cfg_kw), K, MEAN, STD, seed=seed)


def _plain(**kw):
    """No photometric augmentation: the mixed image is exactly the ClassMix of the inputs."""
    return dict(color_jitter_strength=0.0, blur=False, **kw)


# ------------------------------------------------------------------------------------------- EMA
def test_ema_alpha_warmup_and_cap():
    assert ema_alpha(0, 0.999) == 0.0
    assert ema_alpha(1, 0.999) == 0.5
    assert ema_alpha(10, 0.999) == pytest.approx(10 / 11)
    assert ema_alpha(998, 0.999) == pytest.approx(1 - 1 / 999) and ema_alpha(998, 0.999) < 0.999
    assert ema_alpha(999, 0.999) == pytest.approx(0.999)
    assert ema_alpha(5000, 0.999) == 0.999
    assert ema_alpha(50, 0.9) == 0.9


def test_ema_update_formula_params_and_buffers():
    student, teacher = make_model(0), make_model(1)
    student.backbone.stage1[1].running_mean.uniform_()
    student.backbone.stage1[1].num_batches_tracked.fill_(7)
    t0 = {k: v.clone() for k, v in teacher.state_dict().items()}
    s = student.state_dict()
    ema_update(teacher, student, 0.9)
    for k, v in teacher.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v, 0.9 * t0[k] + 0.1 * s[k], atol=1e-7), k
        else:
            assert torch.equal(v, s[k]), k


def test_after_step_follows_alpha_schedule(model, batch):
    st = _strategy(model, ema_alpha=0.999)
    p_s = model.decode_head.conv_seg.weight
    p_t = st.teacher.decode_head.conv_seg.weight
    with torch.no_grad():
        p_s.add_(1.0)
    st.after_step(model, 0)  # a_0 = 0: teacher = student
    assert torch.equal(p_t, p_s)
    for t in (1, 10):
        old_t = p_t.detach().clone()
        with torch.no_grad():
            p_s.mul_(2.0)
        st.after_step(model, t)
        a = 1 - 1 / (t + 1)
        assert torch.allclose(p_t, a * old_t + (1 - a) * p_s, atol=1e-6)
        out = st.compute_losses(model, batch, t)
        assert out.logs["st/ema_alpha"].item() == pytest.approx(a)


def test_teacher_gets_no_grads_and_stays_in_eval(model, batch):
    st = _strategy(model)
    st.train()
    model.train()
    assert not st.teacher.training and all(not m.training for m in st.teacher.modules())
    out = st.compute_losses(model, batch, 0)
    out.total().backward()
    assert all(p.grad is None and not p.requires_grad for p in st.teacher.parameters())
    assert all(p.grad is not None for p in model.parameters())
    # nothing of the strategy is trainable by the trainer's optimiser
    assert [p for p in st.parameters() if p.requires_grad] == []
    assert st.eval_model(model) is model


# ------------------------------------------------------------------------------- pseudo-labels
def test_pseudo_label_confidence_weight_on_constructed_logits():
    logits = torch.zeros(2, 3, 4, 4)
    logits[0, 1, :2] = 10.0  # image 0: top half confident class 1, bottom half uniform (1/3)
    logits[1, 2] = 10.0  # image 1: all confident class 2
    logits[1, 0, 0, 0] = 9.0  # p_max = e/(1+e+e^-9...) ~ 0.73 < 0.968 -> one unconfident pixel
    labels, w, q = pseudo_label(logits, (4, 4), 0.968)
    assert torch.allclose(q, torch.tensor([0.5, 15 / 16]))
    assert torch.equal(labels[0, :2], torch.ones(2, 4, dtype=torch.long))
    assert (labels[1] == 2).all()
    assert torch.allclose(w[0], torch.full((4, 4), 0.5)) and torch.allclose(w[1], torch.full((4, 4), 15 / 16))
    # logits at a lower resolution are upsampled to the label size
    labels2, w2, _ = pseudo_label(logits[:, :, ::2, ::2], (4, 4), 0.968)
    assert labels2.shape == (2, 4, 4) and w2.shape == (2, 4, 4)


def test_pseudo_label_ignore_rows():
    logits = torch.zeros(1, 2, 6, 3)
    logits[:, 0] = 10.0
    _, w, q = pseudo_label(logits, (6, 3), 0.968, ignore_top=1, ignore_bottom=2)
    assert q.item() == 1.0
    assert torch.equal(w[0, :, 0], torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0, 0.0]))


def test_pseudo_label_pixel_weight_is_the_confidence_mask():
    """``weight="pixel"``: 1 where max p >= tau, else 0 (ignored rows 0); q is unchanged."""
    logits = torch.zeros(2, 3, 4, 4)
    logits[0, 1, :2] = 10.0
    logits[1, 2] = 10.0
    logits[1, 0, 0, 0] = 9.0
    _, w, q = pseudo_label(logits, (4, 4), 0.968, weight="pixel")
    assert torch.allclose(q, torch.tensor([0.5, 15 / 16]))
    expect0 = torch.zeros(4, 4)
    expect0[:2] = 1.0
    expect1 = torch.ones(4, 4)
    expect1[0, 0] = 0.0
    assert torch.equal(w[0], expect0) and torch.equal(w[1], expect1)
    _, w, _ = pseudo_label(logits, (4, 4), 0.968, ignore_top=1, weight="pixel")
    assert torch.equal(w[0, 0], torch.zeros(4)) and torch.equal(w[0, 1], torch.ones(4))
    with pytest.raises(ValueError, match="pseudo_weight"):
        pseudo_label(logits, (4, 4), 0.968, weight="soft")


def test_mixed_targets_hand_example():
    mask = torch.tensor([[[True, False, False], [True, True, False]]])
    ys = torch.tensor([[[3, 255, 1], [4, 2, 255]]])
    pseudo = torch.tensor([[[0, 0, 0], [1, 1, 1]]])
    pw = torch.tensor([[[0.0, 0.0, 0.0], [0.25, 0.25, 0.25]]])  # first row ignored, q = 0.25
    y, w = mixed_targets(mask, ys, pseudo, pw)
    assert torch.equal(y, torch.tensor([[[3, 0, 0], [4, 2, 1]]]))
    assert torch.equal(w, torch.tensor([[[1.0, 0.0, 0.0], [1.0, 1.0, 0.25]]]))


# ----------------------------------------------------------------------------- full step
def test_compute_losses_matches_manual_construction(model, batch):
    rec_s, rec_t = RecordingWeighting(None), RecordingWeighting(None)
    factory = {"source": rec_s, "target": rec_t}.get
    st = _strategy(model, factory, seed=3, **_plain(pseudo_threshold=0.2, lambda_target=0.7, ignore_top=4))
    model.eval()  # no dropout/BN noise: the manual forward below must match
    step = 11
    out = st.compute_losses(model, batch, step)
    assert set(out.losses) == {"source.ce", "target.ce"} and out.task == ("source.ce",)
    assert out.weight("target.ce") == 0.7 and out.weight("source.ce") == 1.0
    xs, ys, xt = batch["source"]["image"], batch["source"]["label"], batch["target"]["image"]

    with torch.no_grad():
        prob = torch.softmax(
            F.interpolate(st.teacher(xt).logits, size=(32, 32), mode="bilinear", align_corners=False), 1
        )
        conf, pseudo = prob.max(1)
        q = (conf >= 0.2).float().mean((1, 2))
        mask = classmix_masks(ys, step_generator(3, step))
        y_mix = torch.where(mask, ys, pseudo)
        w_mix = torch.where(mask, torch.ones(()), q.view(2, 1, 1).expand(2, 32, 32).clone())
        w_mix[:, :4] = torch.where(mask[:, :4], 1.0, 0.0)
        x_mix = torch.where(mask[:, None], xs, xt)
        logits_m = F.interpolate(model(x_mix).logits, size=(32, 32), mode="bilinear", align_corners=False)
        ce = F.cross_entropy(logits_m, y_mix, reduction="none", ignore_index=255)
        valid = y_mix != 255
        expected = (ce * w_mix * valid).sum() / valid.sum()
        ce_s = F.cross_entropy(
            F.interpolate(model(xs).logits, size=(32, 32), mode="bilinear", align_corners=False), ys, ignore_index=255
        )
    assert mask.any() and (~mask).any()
    assert torch.allclose(out.losses["target.ce"], expected, atol=1e-5)
    assert torch.allclose(out.losses["source.ce"], ce_s, atol=1e-5)
    assert torch.allclose(out.logs["st/pseudo_conf"], q.mean())
    # the weighting modules saw label-resolution logits and the right labels
    ((ls, ys_seen),) = rec_s.calls
    ((lt, yt_seen),) = rec_t.calls
    assert ls.shape == (2, K, 32, 32) and torch.equal(ys_seen, ys)
    assert torch.allclose(lt, logits_m, atol=1e-5) and torch.equal(yt_seen, y_mix)


def test_class_weights_change_both_ce_terms_as_expected(batch):
    w = torch.tensor([2.0, 0.0, 1.0, 0.5, 3.0])
    base = _strategy(make_model(), None, **_plain())
    weighted = _strategy(make_model(), lambda term: RecordingWeighting(w), **_plain())
    m1, m2 = make_model(), make_model()
    m1.eval(), m2.eval()
    o1, o2 = base.compute_losses(m1, batch, 4), weighted.compute_losses(m2, batch, 4)
    ys = batch["source"]["label"]
    up = F.interpolate(m2(batch["source"]["image"]).logits, size=(32, 32), mode="bilinear", align_corners=False)
    expected = weighted_cross_entropy(up, ys, class_weights=w)
    assert torch.allclose(o2.losses["source.ce"], expected, atol=1e-6)
    assert not torch.allclose(o1.losses["source.ce"], o2.losses["source.ce"])
    assert torch.equal(o2.logs["weights/source"], w) and torch.equal(o2.logs["weights/target"], w)
    # uniform weights 2 double both terms
    twice = _strategy(make_model(), lambda term: RecordingWeighting(torch.full((K,), 2.0)), **_plain())
    o3 = twice.compute_losses(m2, batch, 4)
    for n in ("source.ce", "target.ce"):
        assert torch.allclose(o3.losses[n], 2 * o1.losses[n], atol=1e-6)


def test_determinism_under_seed_and_step():
    batch = make_batch()
    outs = []
    for _ in range(2):
        m = make_model()
        st = _strategy(m, seed=5)
        torch.manual_seed(123)  # dropout in the student uses the global RNG (the trainer seeds it)
        outs.append(st.compute_losses(m, batch, 9))
    assert torch.equal(outs[0].losses["target.ce"], outs[1].losses["target.ce"])
    m = make_model()
    torch.manual_seed(123)
    other = _strategy(m, seed=6).compute_losses(m, batch, 9)
    assert not torch.equal(outs[0].losses["target.ce"], other.losses["target.ce"])


def test_unequal_batch_sizes_pair_modulo():
    batch = make_batch(B=1, Bt=3)
    m = make_model()
    out = _strategy(m).compute_losses(m, batch, 0)
    assert torch.isfinite(out.total())
    with pytest.raises(ValueError, match="same size"):
        bad = make_batch()
        bad["target"]["image"] = bad["target"]["image"][..., :16]
        _strategy(m).compute_losses(m, bad, 0)


# ------------------------------------------------------------------------------ feature distance
def test_downscale_label_ratio_hand_example():
    y = torch.tensor([[[0, 0, 1, 1], [0, 1, 2, 2], [255, 255, 3, 3], [255, 0, 3, 4]]])
    out = downscale_label_ratio(y, (2, 2), 0.75, num_classes=5)
    # cells: {0,0,0,1} -> 0 (3/4); {1,1,2,2} -> tie at 1/2 < .75 -> ignore;
    #        {255,255,255,0} -> ignore wins; {3,3,3,4} -> 3
    assert torch.equal(out, torch.tensor([[[0, 255], [255, 3]]]))
    assert downscale_label_ratio(y, (3, 3), 0.75, 5).shape == (1, 3, 3)


def test_feature_distance_on_thing_classes(batch):
    model = make_model()
    model.eval()
    imnet = make_model(seed=9)
    st = SelfTrainingStrategy(
        model,
        None,
        SelfTrainingConfig(**_plain(fdist_lambda=0.005, fdist_classes=[1, 3], fdist_scale_min_ratio=0.75)),
        K,
        MEAN,
        STD,
        imnet_model=imnet,
    )
    out = st.compute_losses(model, batch, 0)
    assert out.task == ("source.ce", "source.fdist") and out.weight("source.fdist") == 0.005
    xs, ys = batch["source"]["image"], batch["source"]["label"]
    with torch.no_grad():
        f, f_in = model.backbone(xs)[-1], imnet.backbone(xs)[-1]
        small = downscale_label_ratio(ys, f.shape[-2:], 0.75, K)
        m = (small == 1) | (small == 3)
        d = (f - f_in).norm(dim=1)
        expected = d[m].mean()
    assert m.any()
    assert torch.allclose(out.losses["source.fdist"], expected, atol=1e-5)
    out.total().backward()
    assert model.backbone.stage2[0].weight.grad is not None
    assert all(p.grad is None for p in imnet.parameters())
    # not part of the checkpoint
    assert not any(k.startswith("imnet") for k in st.state_dict())
    # identical ImageNet model -> zero distance
    st2 = SelfTrainingStrategy(
        model, None, SelfTrainingConfig(**_plain()), K, MEAN, STD, imnet_model=copy.deepcopy(model)
    )
    assert st2.compute_losses(model, batch, 0).losses["source.fdist"].abs().item() < 1e-6


# ----------------------------------------------------------------------------------- checkpoint
def test_state_dict_round_trip_restores_teacher(batch):
    m = make_model()
    st = _strategy(m, seed=1)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    for step in range(3):
        opt.zero_grad()
        st.compute_losses(m, batch, step).total().backward()
        opt.step()
        st.after_step(m, step)
    m2 = make_model(seed=42)
    st2 = _strategy(m2, seed=1)
    st2.load_state_dict(st.state_dict())
    for (k, a), b in zip(st.teacher.state_dict().items(), st2.teacher.state_dict().values()):
        assert torch.equal(a, b), k
    assert not st2.teacher.training
    m2.load_state_dict(m.state_dict())
    torch.manual_seed(0)
    a = st.compute_losses(m, batch, 3).losses["target.ce"]
    torch.manual_seed(0)
    b = st2.compute_losses(m2, batch, 3).losses["target.ce"]
    assert torch.equal(a, b)


def test_feature_distance_without_class_restriction_and_under_autocast(batch):
    model, imnet = make_model(), make_model(seed=9)
    model.eval()
    st = SelfTrainingStrategy(model, None, SelfTrainingConfig(fdist_classes=[]), K, MEAN, STD, imnet_model=imnet)
    out = st.compute_losses(model, batch, 0)
    xs = batch["source"]["image"]
    with torch.no_grad():
        expected = (model.backbone(xs)[-1] - imnet.backbone(xs)[-1]).norm(dim=1).mean()
    assert torch.allclose(out.losses["source.fdist"], expected, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = st.compute_losses(model, batch, 1)
    assert all(torch.isfinite(v) for v in out.losses.values())
    out.total().backward()
