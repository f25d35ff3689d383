"""GH / GH++ / PCGrad weights against their equations (specs/gh.md), in float64."""

from __future__ import annotations

import math

import pytest
import torch

from balda.balancing.gh import (
    angle_degrees,
    cosine,
    gh_project,
    gh_weights,
    ghpp_exact_coeffs,
    ghpp_weights,
    grad_stats,
    harmonized_weights,
    pcgrad,
)

F64 = torch.float64


def _pair(seed: int, n: int = 50, conflict: bool = True):
    """Two random float64 vectors with d < 0 (or d > 0) and different norms."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, generator=g, dtype=F64) * (0.5 + seed % 3)
    b = torch.randn(n, generator=g, dtype=F64)
    # mix in -a (or +a) so the sign of d is the requested one
    c = b + (-0.8 if conflict else 0.8) * a * (b.norm() / a.norm())
    if (torch.dot(a, c) < 0) != conflict:
        c = c - (1.0 if conflict else -1.0) * 2 * torch.dot(a, c) / torch.dot(a, a) * a
    assert (torch.dot(a, c) < 0) == conflict
    return a, c


def _stats(a, c):
    return torch.dot(a, c), torch.dot(a, a), torch.dot(c, c)


def _rel(x, scale):
    return float(abs(x) / scale)


# ------------------------------------------------------------------------------------------ GH
@pytest.mark.parametrize("seed", range(6))
def test_gh_weights_equal_formula_on_random_gradients(seed):
    g_a, g_c = _pair(seed)
    d, na, nc = _stats(g_a, g_c)
    w_a, w_c = gh_weights(d, na, nc)
    dd, a2, c2 = float(d), float(na), float(nc)
    assert dd < 0
    assert float(w_a) == pytest.approx(1 - dd / a2, rel=1e-14)
    assert float(w_c) == pytest.approx(1 - dd / c2, rel=1e-14)
    assert float(w_a) > 1 and float(w_c) > 1


@pytest.mark.parametrize("seed", range(6))
def test_gh_identity_without_conflict(seed):
    g_a, g_c = _pair(seed, conflict=False)
    d, na, nc = _stats(g_a, g_c)
    w_a, w_c = gh_weights(d, na, nc)
    assert float(w_a) == 1.0 and float(w_c) == 1.0
    p_a, p_c = gh_project(g_a, g_c)
    assert torch.equal(p_a, g_a) and torch.equal(p_c, g_c)
    assert torch.allclose(pcgrad(g_a, g_c), g_a + g_c, rtol=0, atol=0)
    for variant in ("gh", "gh++", "gh++exact", "pcgrad"):
        w = harmonized_weights(variant, d, na, nc, 0.3, 2.0)
        assert float(w[0]) == 1.0 and float(w[1]) == 1.0, variant


def test_gh_identity_at_zero_dot_and_zero_gradient():
    z = torch.zeros(5, dtype=F64)
    a = torch.randn(5, dtype=F64)
    for x, y in ((z, a), (a, z), (z, z)):
        d, na, nc = _stats(x, y)
        w = gh_weights(d, na, nc)
        assert [float(v) for v in w] == [1.0, 1.0]
        assert float(cosine(d, na, nc)) == 0.0
        for variant in ("gh++", "gh++exact"):
            w = harmonized_weights(variant, d, na, nc)
            assert [float(v) for v in w] == [1.0, 1.0]


@pytest.mark.parametrize("seed", range(6))
def test_gh_summed_update_equals_pcgrad_and_projections_are_orthogonal(seed):
    g_a, g_c = _pair(seed, n=200)
    d, na, nc = _stats(g_a, g_c)
    w_a, w_c = gh_weights(d, na, nc)
    update = w_a * g_a + w_c * g_c
    ref = pcgrad(g_a, g_c)
    torch.testing.assert_close(update, ref, rtol=1e-12, atol=1e-12)
    p_a, p_c = gh_project(g_a, g_c)
    torch.testing.assert_close(p_a + p_c, ref, rtol=1e-12, atol=1e-12)
    scale = float(g_a.norm() * g_c.norm())
    assert _rel(torch.dot(p_a, g_c), scale) < 1e-12
    assert _rel(torch.dot(p_c, g_a), scale) < 1e-12
    # obtuse -> acute: the harmonized pair is no longer conflicting
    assert float(torch.dot(p_a, p_c)) >= -1e-12 * scale


# ---------------------------------------------------------------------------------------- GH++
@pytest.mark.parametrize("k", [0.0, 0.25, 0.5, 0.8, 1.0])
@pytest.mark.parametrize("cos", [-1.0, -0.9, -0.5, -0.1, -1e-6])
def test_ghpp_weights_equal_formula(k, cos):
    w_1, w_2 = ghpp_weights(torch.tensor(cos, dtype=F64), k)
    phi = math.degrees(math.acos(cos))
    beta_max = phi - 90.0
    beta = k * beta_max
    assert float(w_1) == pytest.approx(1 + 2 * math.sin(math.radians(beta) / 2), rel=1e-12, abs=1e-12)
    assert float(w_2) == pytest.approx(1 + 2 * math.sin(math.radians(beta - beta_max) / 2), rel=1e-12, abs=1e-12)


def test_ghpp_weights_sum_to_two_and_are_bounded_at_half_range():
    cos = torch.linspace(-1.0, 0.0, 2001, dtype=F64)[:-1]
    w_1, w_2 = ghpp_weights(cos, 0.5)
    torch.testing.assert_close(w_1 + w_2, torch.full_like(cos, 2.0), rtol=0, atol=1e-12)
    hi = 1 + 2 * math.sin(math.radians(22.5))
    assert float(w_1.min()) >= 1.0 and float(w_1.max()) <= hi + 1e-12
    assert float(w_2.max()) <= 1.0 and float(w_2.min()) >= 2 - hi - 1e-12
    assert bool(torch.all(w_1[1:] <= w_1[:-1] + 1e-15))  # more conflict -> more up-weighting
    assert float(w_1[0]) == pytest.approx(hi, rel=1e-12)  # phi = 180
    # no conflict: identity
    one = ghpp_weights(torch.tensor([0.0, 0.3, 1.0], dtype=F64), 0.5)
    assert all(bool(torch.all(w == 1)) for w in one)


def test_ghpp_weights_depend_only_on_angle_and_order():
    g_a, g_c = _pair(3)
    d, na, nc = _stats(g_a, g_c)
    w_a, w_c = harmonized_weights("gh++", d, na, nc, k=0.5, first="alignment")
    w_a2, w_c2 = harmonized_weights("gh++", 9 * d, 9 * na, 9 * nc, k=0.5, first="alignment")
    torch.testing.assert_close(w_a, w_a2)
    assert float(w_a) > 1 > float(w_c)
    t_a, t_c = harmonized_weights("gh++", d, na, nc, k=0.5, first="task")
    assert float(t_c) == pytest.approx(float(w_a)) and float(t_a) == pytest.approx(float(w_c))


# ---------------------------------------------------------------------------------- gh++exact
def _exact_pair(g_1, g_2, c_cos, k):
    """The rotated vectors, written from the coefficients' two halves (see the docstring)."""
    phi = math.acos(c_cos)
    beta = k * (phi - math.pi / 2)
    gamma = (phi - math.pi / 2) - beta
    n_1, n_2 = g_1.norm(), g_2.norm()
    s = math.sin(phi)
    r_1 = math.sin(phi - beta) / s * g_1 + n_1 / n_2 * math.sin(beta) / s * g_2
    r_2 = math.sin(phi - gamma) / s * g_2 + n_2 / n_1 * math.sin(gamma) / s * g_1
    return r_1, r_2


def _rotate_in_plane(g_1, g_2, k):
    """Independent construction: Gram-Schmidt basis (u, v) of the plane, rotate by angles."""
    u = g_1 / g_1.norm()
    w = g_2 - torch.dot(g_2, u) * u
    v = w / w.norm()
    phi = math.acos(float(torch.dot(g_1, g_2) / (g_1.norm() * g_2.norm())))
    beta = k * (phi - math.pi / 2)
    gamma = (phi - math.pi / 2) - beta
    r_1 = g_1.norm() * (math.cos(beta) * u + math.sin(beta) * v)  # angle beta from g_1 towards g_2
    r_2 = g_2.norm() * (math.cos(phi - gamma) * u + math.sin(phi - gamma) * v)  # g_2 towards g_1
    return r_1, r_2


@pytest.mark.parametrize("k", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("seed", range(4))
def test_ghpp_exact_gives_orthogonal_norm_preserving_rotation(seed, k):
    g_1, g_2 = _pair(seed, n=300)
    d, n1, n2 = _stats(g_1, g_2)
    cos = cosine(d, n1, n2)
    c_1, c_2 = ghpp_exact_coeffs(cos, n1.sqrt(), n2.sqrt(), k)
    r_1, r_2 = _rotate_in_plane(g_1, g_2, k)
    # orthogonal to 1e-6 relative, norms kept, and the coefficients reproduce their sum
    assert _rel(torch.dot(r_1, r_2), float(r_1.norm() * r_2.norm())) < 1e-6
    torch.testing.assert_close(r_1.norm(), g_1.norm())
    torch.testing.assert_close(c_1 * g_1 + c_2 * g_2, r_1 + r_2, rtol=1e-10, atol=1e-10)
    h_1, h_2 = _exact_pair(g_1, g_2, float(cos), k)
    torch.testing.assert_close(h_1, r_1, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h_2, r_2, rtol=1e-10, atol=1e-10)
    assert _rel(torch.dot(h_1, h_2), float(h_1.norm() * h_2.norm())) < 1e-6
    # equal to the spec's closed form
    phi = math.acos(float(cos))
    beta = k * (phi - math.pi / 2)
    gamma = phi - math.pi / 2 - beta
    r = float(g_2.norm() / g_1.norm())
    assert float(c_1) == pytest.approx((math.sin(phi - beta) + r * math.sin(gamma)) / math.sin(phi), rel=1e-12)
    assert float(c_2) == pytest.approx((math.sin(phi - gamma) + math.sin(beta) / r) / math.sin(phi), rel=1e-12)


def test_ghpp_exact_is_safe_near_180_degrees():
    g = torch.Generator().manual_seed(0)
    g_1 = torch.randn(40, generator=g, dtype=F64)
    perp = torch.randn(40, generator=g, dtype=F64)
    perp -= torch.dot(perp, g_1) / torch.dot(g_1, g_1) * g_1
    prev = None
    for eps in (1e-2, 1e-4, 1e-8, 1e-12, 0.0):
        g_2 = -2.0 * g_1 + eps * perp
        d, n1, n2 = _stats(g_1, g_2)
        cos = cosine(d, n1, n2)
        c_1, c_2 = ghpp_exact_coeffs(cos, n1.sqrt(), n2.sqrt(), 0.5)
        assert bool(torch.isfinite(c_1)) and bool(torch.isfinite(c_2))
        bound = (1 + float(n2.sqrt() / n1.sqrt())) / math.sin(math.radians(1.0))
        assert abs(float(c_1)) <= bound and abs(float(c_2)) <= bound
        update = c_1 * g_1 + c_2 * g_2
        assert bool(torch.isfinite(update).all())
        assert float(update.norm()) <= float(g_1.norm() + g_2.norm()) * 1.01
        if prev is not None:  # beyond max_angle the coefficients are constant (continuous)
            torch.testing.assert_close(c_1, prev[0], rtol=1e-6, atol=0)
        prev = (c_1, c_2) if eps <= 1e-4 else None
    cos = torch.tensor(-1.0, dtype=F64)
    assert all(bool(torch.isfinite(w)) for w in ghpp_weights(cos, 0.5))
    assert float(angle_degrees(cos)) == pytest.approx(180.0)
    with pytest.raises(ValueError):
        ghpp_exact_coeffs(cos, 1.0, 1.0, 0.5, max_angle=180.0)


# ------------------------------------------------------------------------------ statistics etc.
def test_grad_stats_match_flat_vectors_with_missing_grads():
    g = torch.Generator().manual_seed(1)
    shapes = [(3, 4), (5,), (2, 2, 2)]
    ga = [torch.randn(s, generator=g) for s in shapes]
    gc = [torch.randn(s, generator=g) for s in shapes]
    ga[1] = None  # unused by L_a: zeros
    d, na, nc = grad_stats(ga, gc)
    assert d.dtype == F64 and na.dtype == F64
    fa = torch.cat([(x if x is not None else torch.zeros(s)).reshape(-1).double() for x, s in zip(ga, shapes)])
    fc = torch.cat([x.reshape(-1).double() for x in gc])
    torch.testing.assert_close(d, torch.dot(fa, fc))
    torch.testing.assert_close(na, torch.dot(fa, fa))
    torch.testing.assert_close(nc, torch.dot(fc, fc))
    z = grad_stats([None], [None])
    assert all(float(x) == 0.0 for x in z)
    with pytest.raises(ValueError):
        grad_stats([None], [])


def test_cosine_and_angle():
    a = torch.tensor([1.0, 0.0], dtype=F64)
    b = torch.tensor([-1.0, 1.0], dtype=F64)
    cos = cosine(*_stats(a, b))
    assert float(cos) == pytest.approx(-1 / math.sqrt(2))
    assert float(angle_degrees(cos)) == pytest.approx(135.0)


@pytest.mark.parametrize("seed", range(4))
def test_pcgrad_variant_projects_the_trade_off_weighted_gradients(seed):
    g_a, g_c = _pair(seed, n=100)
    lam_a, lam_c = 0.1, 1.0
    d, na, nc = _stats(g_a, g_c)
    w_a, w_c = harmonized_weights("pcgrad", d, na, nc, lam_a, lam_c)
    torch.testing.assert_close(
        w_a * lam_a * g_a + w_c * lam_c * g_c, pcgrad(lam_a * g_a, lam_c * g_c), rtol=1e-12, atol=1e-12
    )
    # equal trade-offs: pcgrad == gh
    for lam in (1.0, 0.25):
        p = harmonized_weights("pcgrad", d, na, nc, lam, lam)
        q = harmonized_weights("gh", d, na, nc, lam, lam)
        torch.testing.assert_close(torch.stack(p), torch.stack(q))
    with pytest.raises(ValueError):
        harmonized_weights("nope", d, na, nc)


def test_weights_stay_on_device_as_tensors():
    g_a, g_c = _pair(0)
    d, na, nc = _stats(g_a.float(), g_c.float())
    for variant in ("gh", "gh++", "gh++exact", "pcgrad"):
        w = harmonized_weights(variant, d, na, nc, 0.5, 1.0)
        assert all(isinstance(x, torch.Tensor) and x.dim() == 0 and x.device == d.device for x in w)
