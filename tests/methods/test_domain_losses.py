"""Equation tests of the classification domain-adaptation losses (balda.methods.domain_losses)."""

from __future__ import annotations

import math

import pytest
import torch

from balda.methods.domain_losses import (
    CDANMap,
    DomainDiscriminator,
    GradientReversal,
    RandomizedMultilinearMap,
    cdan_entropy_weights,
    dann_lambda,
    domain_accuracy,
    domain_adversarial_loss,
    entropy,
    grad_reverse,
    mcd_discrepancy,
    minent_loss,
    multilinear_map,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------- GRL
@pytest.mark.parametrize("lambd", [0.0, 0.37, 1.0, torch.tensor(2.5)])
def test_grl_forward_identity_backward_reversed(lambd):
    g = _gen()
    x = torch.randn(4, 6, generator=g, requires_grad=True)
    w = torch.randn(4, 6, generator=g)
    y = grad_reverse(x, lambd)
    assert torch.equal(y, x)
    (grad_rev,) = torch.autograd.grad((w * y.sin()).sum(), x)
    (grad_plain,) = torch.autograd.grad((w * x.sin()).sum(), x)
    torch.testing.assert_close(grad_rev, -float(lambd) * grad_plain)


def test_grl_module_uses_current_lambda():
    grl = GradientReversal(1.0)
    x = torch.ones(3, requires_grad=True)
    grl.lambd = dann_lambda(0.5)
    grl(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((3,), -dann_lambda(0.5)))
    assert len(list(grl.parameters())) == 0 and len(list(grl.buffers())) == 0


def test_dann_lambda_schedule_values():
    assert dann_lambda(0.0) == 0.0
    assert dann_lambda(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert dann_lambda(0.1) == pytest.approx(2 / (1 + math.exp(-1)) - 1)  # 0.46212
    assert dann_lambda(0.1) == pytest.approx(0.4621171572600098)
    assert dann_lambda(0.5, high=0.3) == pytest.approx(0.3 * (2 / (1 + math.exp(-5)) - 1))
    p = torch.linspace(0, 1, 11)
    lam = dann_lambda(p)
    assert torch.all(lam[1:] > lam[:-1])
    torch.testing.assert_close(lam, torch.tensor([dann_lambda(float(v)) for v in p]))


# ------------------------------------------------------------------------------------ discriminator
def test_discriminator_architecture_and_shape():
    d = DomainDiscriminator(20, hidden=1024)
    lin = [m for m in d.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in lin] == [(20, 1024), (1024, 1024), (1024, 1)]
    assert sum(isinstance(m, torch.nn.Dropout) for m in d.modules()) == 2
    assert d(torch.randn(5, 20)).shape == (5,)


def _bce64(z: torch.Tensor, y: float) -> torch.Tensor:
    p = torch.sigmoid(z.double())
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p))


def test_dann_loss_matches_float64_reference():
    g = _gen(1)
    ds, dt = 3 * torch.randn(7, generator=g), 3 * torch.randn(5, generator=g)
    ref = 0.5 * (_bce64(ds, 1.0).mean() + _bce64(dt, 0.0).mean())
    torch.testing.assert_close(domain_adversarial_loss(ds, dt).double(), ref, rtol=1e-6, atol=1e-7)
    # the built-in BCE with the same labels gives the same value
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    alt = 0.5 * (bce(ds, torch.ones_like(ds)) + bce(dt, torch.zeros_like(dt)))
    torch.testing.assert_close(domain_adversarial_loss(ds, dt), alt)
    # weighted: sum_i w_i BCE_i per domain, averaged over the domains
    ws, wt = torch.rand(7, generator=g), torch.rand(5, generator=g)
    ws, wt = ws / ws.sum(), wt / wt.sum()
    ref_w = 0.5 * ((ws.double() * _bce64(ds, 1.0)).sum() + (wt.double() * _bce64(dt, 0.0)).sum())
    torch.testing.assert_close(domain_adversarial_loss(ds, dt, ws, wt).double(), ref_w, rtol=1e-6, atol=1e-7)


def test_dann_loss_is_stable_and_has_the_right_sign():
    big = torch.tensor([80.0, -80.0])
    assert torch.isfinite(domain_adversarial_loss(big, -big))
    # a discriminator that is right on both domains has a smaller loss than one that is wrong
    assert domain_adversarial_loss(torch.tensor([4.0]), torch.tensor([-4.0])) < domain_adversarial_loss(
        torch.tensor([-4.0]), torch.tensor([4.0])
    )
    assert domain_accuracy(torch.tensor([1.0, -1.0]), torch.tensor([-2.0, -3.0])) == pytest.approx(0.75)


def test_dann_gradient_through_grl_is_reversed_discriminator_gradient():
    g = _gen(2)
    torch.manual_seed(0)
    d = DomainDiscriminator(8, hidden=16, dropout=0.0)
    fs, ft = torch.randn(4, 8, generator=g, requires_grad=True), torch.randn(4, 8, generator=g)
    lam = 0.6
    (g_rev,) = torch.autograd.grad(domain_adversarial_loss(d(grad_reverse(fs, lam)), d(ft)), fs)
    (g_d,) = torch.autograd.grad(domain_adversarial_loss(d(fs), d(ft)), fs)
    torch.testing.assert_close(g_rev, -lam * g_d)


# --------------------------------------------------------------------------------------------- CDAN
def test_multilinear_map_is_the_outer_product():
    g = _gen(3)
    f, p = torch.randn(3, 5, generator=g), torch.softmax(torch.randn(3, 4, generator=g), 1)
    t = multilinear_map(f, p)
    assert t.shape == (3, 20)
    torch.testing.assert_close(t, torch.einsum("bi,bk->bik", f, p).reshape(3, -1))
    torch.testing.assert_close(t[1].view(5, 4), torch.outer(f[1], p[1]))
    assert t[2, 2 * 4 + 3] == f[2, 2] * p[2, 3]


def test_randomized_map_closed_form_and_fixed_matrices():
    g = _gen(4)
    f, p = torch.randn(6, 32, generator=g), torch.softmax(torch.randn(6, 10, generator=g), 1)
    m = RandomizedMultilinearMap(32, 10, output_dim=1024, seed=5)
    assert m.Rf.shape == (32, 1024) and m.Rg.shape == (10, 1024)
    assert not m.Rf.requires_grad and len(list(m.parameters())) == 0
    out = m(f, p)
    ref = (f.double() @ m.Rf.double()) * (p.double() @ m.Rg.double()) / math.sqrt(1024)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    # same seed -> same matrices (saved as buffers); another seed -> other ones
    m2 = RandomizedMultilinearMap(32, 10, output_dim=1024, seed=5)
    assert torch.equal(m.Rf, m2.Rf) and torch.equal(m.Rg, m2.Rg)
    assert not torch.equal(m.Rf, RandomizedMultilinearMap(32, 10, seed=6).Rf)
    assert set(m.state_dict()) == {"Rf", "Rg"}


def test_randomized_map_preserves_inner_products_in_expectation():
    # E <T(f,g), T(f',g')> = <f,f'> <g,g'> over the random matrices: average over many seeds
    g = _gen(5)
    f1, f2 = torch.randn(1, 6, generator=g), torch.randn(1, 6, generator=g)
    p1, p2 = torch.rand(1, 3, generator=g), torch.rand(1, 3, generator=g)
    vals = []
    for s in range(200):
        m = RandomizedMultilinearMap(6, 3, output_dim=256, seed=s)
        vals.append((m(f1, p1) * m(f2, p2)).sum())
    want = float((f1 * f2).sum() * (p1 * p2).sum())
    scale = float(f1.norm() * f2.norm() * p1.norm() * p2.norm())
    assert abs(float(torch.stack(vals).mean()) - want) < 0.1 * scale


def test_cdan_map_switches_at_4096():
    small = CDANMap(256, 10)  # 2560 <= 4096: exact multilinear map
    assert not small.randomized and small.out_features == 2560
    big = CDANMap(256, 31)  # 7936 > 4096: randomized, d = 1024
    assert big.randomized and big.out_features == 1024
    f, p = torch.randn(2, 256), torch.softmax(torch.randn(2, 31), 1)
    assert big(f, p).shape == (2, 1024)
    torch.testing.assert_close(small(f, p[:, :10]), multilinear_map(f, p[:, :10]))
    assert CDANMap(4, 3, randomized=True, output_dim=8).out_features == 8


# ------------------------------------------------------------------------------- entropy, MCD, MinEnt
def test_entropy_closed_form():
    z = torch.tensor([[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]])
    h = entropy(z)
    p = torch.softmax(z[2].double(), 0)
    torch.testing.assert_close(h[0], torch.tensor(math.log(4)))
    assert float(h[1]) == pytest.approx(0.0, abs=1e-6)
    torch.testing.assert_close(h[2].double(), -(p * p.log()).sum(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(entropy(z, normalise=True)[0], torch.tensor(1.0))
    torch.testing.assert_close(minent_loss(z), h.mean())


def test_cdan_entropy_weights_sum_to_one_per_domain():
    g = _gen(6)
    zs, zt = 2 * torch.randn(8, 5, generator=g), 2 * torch.randn(6, 5, generator=g)
    ws, wt = cdan_entropy_weights(zs, zt)
    torch.testing.assert_close(ws.sum(), torch.tensor(1.0))
    torch.testing.assert_close(wt.sum(), torch.tensor(1.0))
    for w, z in ((ws, zs), (wt, zt)):
        raw = 1.0 + torch.exp(-entropy(z))
        torch.testing.assert_close(w * raw.sum(), raw)  # proportional to 1 + exp(-H)
        # confident samples weigh more
        assert w[entropy(z).argmin()] == w.max()
    assert not ws.requires_grad


def test_mcd_discrepancy_closed_form():
    g = _gen(7)
    z1, z2 = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    p1, p2 = torch.softmax(z1.double(), 1), torch.softmax(z2.double(), 1)
    ref = (p1 - p2).abs().sum() / (4 * 3)
    torch.testing.assert_close(mcd_discrepancy(z1, z2).double(), ref, rtol=1e-6, atol=1e-7)
    assert mcd_discrepancy(z1, z1) == 0
    # two one-hot disagreeing predictions: |1 - 0| + |0 - 1| over K = 2 classes -> 1
    assert mcd_discrepancy(torch.tensor([[50.0, -50.0]]), torch.tensor([[-50.0, 50.0]])) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        mcd_discrepancy(z1, z2[:, :2])
