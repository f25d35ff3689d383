import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from balda.methods.adversarial import (
    AdversarialConfig,
    AdversarialStrategy,
    Discriminator,
    discriminator_input,
    gan_loss,
)
from balda.methods.losses import entropy_map

from .conftest import MEAN, STD, K, RecordingWeighting, make_batch, make_model


def _strategy(model, weighting=None, **kw):
    return AdversarialStrategy(model, weighting, AdversarialConfig(**kw), K, MEAN, STD, seed=0)


def test_discriminator_architecture():
    d = Discriminator(K, ndf=4)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(K, 4), (4, 8), (8, 16), (16, 32), (32, 1)]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) for c in convs)
    acts = [m for m in d.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(acts) == 4 and all(a.negative_slope == 0.2 for a in acts)
    assert d(torch.randn(2, K, 64, 64)).shape == (2, 1, 2, 2)


def test_discriminator_inputs():
    logits = torch.randn(2, K, 4, 4)
    p = torch.softmax(logits, 1)
    assert torch.allclose(discriminator_input(logits, "softmax"), p, atol=1e-6)
    ent = discriminator_input(logits, "entropy")
    assert torch.allclose(ent, -p * torch.log(p) / math.log(K), atol=1e-6)
    assert torch.allclose(ent.sum(1), entropy_map(logits), atol=1e-6)  # weighted self-information
    assert discriminator_input(logits, "softmax", size=(8, 8)).shape == (2, K, 8, 8)


def test_gan_losses_equal_formulas():
    z = torch.randn(3, 1, 5, 5)
    s = torch.sigmoid(z)
    assert torch.allclose(gan_loss(z, 0.0), -torch.log(1 - s).mean(), atol=1e-6)
    assert torch.allclose(gan_loss(z, 1.0), -torch.log(s).mean(), atol=1e-6)
    assert torch.allclose(gan_loss(z, 0.0, "lsgan"), (z**2).mean())
    assert torch.allclose(gan_loss(z, 1.0, "lsgan"), ((z - 1) ** 2).mean())


@pytest.mark.parametrize("inp,gan", [("entropy", "bce"), ("softmax", "lsgan")])
def test_generator_losses_and_gradients(inp, gan):
    model, batch = make_model(), make_batch()
    model.eval()
    st = _strategy(model, input=inp, gan=gan, lambda_adv=0.01, ndf=8)
    out = st.compute_losses(model, batch, 0)
    assert set(out.losses) == {"source.ce", "target.adv"} and out.task == ("source.ce",)
    assert out.weight("target.adv") == 0.01
    with torch.no_grad():
        up = F.interpolate(model(batch["target"]["image"]).logits, size=(32, 32), mode="bilinear", align_corners=False)
        z = st.discriminator(discriminator_input(up, inp))
        expected = F.binary_cross_entropy_with_logits(z, torch.zeros_like(z)) if gan == "bce" else (z**2).mean()
    assert torch.allclose(out.losses["target.adv"], expected, atol=1e-6)
    out.total().backward()
    assert all(p.grad is None for p in st.discriminator.parameters())  # generator step: D untouched
    assert all(p.requires_grad for p in st.discriminator.parameters())  # ... and re-enabled for its step
    assert model.decode_head.conv_seg.weight.grad is not None


def test_discriminator_step_formula_and_isolation():
    model, batch = make_model(), make_batch()
    st = _strategy(model, ndf=8)
    out = st.compute_losses(model, batch, 0)
    out.total().backward()
    seg_grads = [p.grad.clone() for p in model.parameters()]
    seg_params = [p.detach().clone() for p in model.parameters()]
    d_params = [p.detach().clone() for p in st.discriminator.parameters()]
    map_s, map_t = st._maps
    assert not map_s.requires_grad and not map_t.requires_grad
    with torch.no_grad():
        zs, zt = st.discriminator(map_s), st.discriminator(map_t)
        expected = (-torch.log(1 - torch.sigmoid(zs)).mean() - torch.log(torch.sigmoid(zt)).mean()) / 2
    logs = st.after_step(model, 0)
    assert torch.allclose(logs["adv/d_loss"], expected, atol=1e-5)
    assert torch.allclose(logs["adv/d_src_acc"], (zs < 0).float().mean())
    assert torch.allclose(logs["adv/d_tgt_acc"], (zt >= 0).float().mean())
    # the D step changes D only and leaves the segmentor's grads and weights untouched
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), seg_grads))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), seg_params))
    assert all(not torch.equal(p, q) for p, q in zip(st.discriminator.parameters(), d_params))
    assert st.after_step(model, 1) == {}  # maps are consumed once


def test_which_parameters_each_optimiser_updates():
    model = make_model()
    st = _strategy(model, lr=2e-4, betas=[0.5, 0.9])
    d_ids = {id(p) for p in st.discriminator.parameters()}
    opt_ids = {id(p) for g in st.d_optimizer.param_groups for p in g["params"]}
    assert opt_ids == d_ids
    assert st.d_optimizer.param_groups[0]["lr"] == 2e-4 and st.d_optimizer.param_groups[0]["betas"] == (0.5, 0.9)
    # the trainer's optimiser takes only the strategy parameters it declares: none here (D has its own)
    assert st.optimized_with_model() == []
    assert not (d_ids & {id(p) for p in model.parameters()})


def test_poly_decay_of_discriminator_lr():
    st = AdversarialStrategy(make_model(), None, AdversarialConfig(lr=1e-4), K, MEAN, STD, max_iters=100)
    assert st.d_lr(0) == 1e-4 and st.d_lr(50) == pytest.approx(1e-4 * 0.5**0.9)
    assert _strategy(make_model()).d_lr(50) == 1e-4


def test_minent_term_and_class_weighting():
    model, batch = make_model(), make_batch()
    model.eval()
    rec = RecordingWeighting(torch.full((K,), 3.0))
    st = _strategy(model, {"source": rec}.get, lambda_ent=0.5)
    ref = _strategy(model, None, lambda_ent=0.5)
    out, out_ref = st.compute_losses(model, batch, 0), ref.compute_losses(model, batch, 0)
    assert out.weight("target.ent") == 0.5 and "target.ent" in out.losses
    up = F.interpolate(model(batch["target"]["image"]).logits, size=(32, 32), mode="bilinear", align_corners=False)
    assert torch.allclose(out.losses["target.ent"], entropy_map(up).mean(), atol=1e-6)
    ((logits, labels),) = rec.calls
    assert logits.shape == (2, K, 32, 32) and torch.equal(labels, batch["source"]["label"])
    assert torch.allclose(out.losses["source.ce"], 3 * out_ref.losses["source.ce"], atol=1e-6)


def test_state_dict_round_trip_restores_discriminator_and_optimiser():
    batch = make_batch()
    m = make_model()
    st = _strategy(m, ndf=8)
    for step in range(2):
        st.compute_losses(m, batch, step)
        st.after_step(m, step)
    sd = st.state_dict()
    st2 = _strategy(make_model(seed=3), ndf=8)
    st2.load_state_dict(sd)
    for a, b in zip(st.discriminator.parameters(), st2.discriminator.parameters()):
        assert torch.equal(a, b)
    s1, s2 = st.d_optimizer.state_dict()["state"], st2.d_optimizer.state_dict()["state"]
    assert s1.keys() == s2.keys() and len(s1) > 0
    for k in s1:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(s1[k][name], s2[k][name])
    # both continue identically (same maps: dropout off)
    m.eval()
    for s in (st, st2):
        s.compute_losses(m, batch, 2)
        s.after_step(m, 2)
    for a, b in zip(st.discriminator.parameters(), st2.discriminator.parameters()):
        assert torch.equal(a, b)


def test_runs_under_autocast():
    model, batch = make_model(), make_batch()
    st = _strategy(model, ndf=8, lambda_ent=0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = st.compute_losses(model, batch, 0)
    out.total().backward()
    logs = st.after_step(model, 0)
    assert torch.isfinite(logs["adv/d_loss"]) and all(p.grad is not None for p in st.discriminator.parameters())
