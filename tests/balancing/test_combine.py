"""Combiners: the assembled gradients equal float64 autograd of the weighted loss (specs/gh.md)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from balda.balancing.combine import (
    HarmonizingCombiner,
    SumCombiner,
    build_combiner,
    shared_parameters,
)
from balda.balancing.gh import pcgrad
from balda.config import BalancingConfig, GHConfig
from balda.methods.base import StepOutput

F64 = torch.float64
VARIANTS = ("gh", "gh++", "gh++exact", "pcgrad")
MODES = ("all", "decoder")


class Net(nn.Module):
    """A 2-layer 'segmentor': backbone (Linear + tanh) -> decode_head (Linear)."""

    def __init__(self, dtype=F64):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.backbone = nn.Linear(4, 6).to(dtype)
        self.decode_head = nn.Linear(6, 3).to(dtype)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=F64) * 0.7)  # same values for any dtype

    def forward(self, x):
        return self.decode_head(torch.tanh(self.backbone(x)))


def _setup(dtype=F64):
    torch.manual_seed(0)
    net = Net(dtype)
    disc = nn.Linear(3, 1).double()  # fed by the alignment loss, never in params
    proto = nn.Parameter(torch.randn(3, dtype=F64).to(dtype))  # optimised, non-shared (CPSL prototypes)
    disc.to(dtype)
    g = torch.Generator().manual_seed(1)
    data = {
        "xs": torch.randn(8, 4, generator=g, dtype=F64),
        "ys": torch.randn(8, 3, generator=g, dtype=F64),
        "xt": torch.randn(8, 4, generator=g, dtype=F64),
        "noise": 0.3 * torch.randn(8, 4, generator=g, dtype=F64),
    }
    data = {k: v.to(dtype) for k, v in data.items()}
    return net, disc, proto, data


def _losses(net, disc, proto, data, kind="conflict"):
    """Unweighted named losses. 'conflict': the alignment group opposes the task (d < 0)."""
    ps, pt = net(data["xs"]), net(data["xt"])
    task = ((ps - data["ys"]) ** 2).mean()
    pn = net(data["xs"] + data["noise"])
    sign = -1.0 if kind == "conflict" else 1.0
    return {
        "source.ce": task,
        "source.aux": ((ps - 0.5 * data["ys"]) ** 2).mean(),
        "target.neg": sign * ((pn - data["ys"]) ** 2).mean(),
        "target.adv": nn.functional.binary_cross_entropy_with_logits(disc(pt), torch.ones(8, 1, dtype=pt.dtype)),
        "target.proto": ((pt - proto) ** 2).mean(),
    }


WEIGHTS = {"source.ce": 1.0, "source.aux": 0.4, "target.neg": 0.5, "target.adv": 0.2, "target.proto": 0.1}
TASK = ("source.ce", "source.aux")


def _out(net, disc, proto, data, kind="conflict", weights=WEIGHTS, task=TASK, names=None):
    losses = _losses(net, disc, proto, data, kind)
    if names is not None:
        losses = {n: losses[n] for n in names}
    return StepOutput(losses=losses, weights={n: w for n, w in weights.items() if n in losses}, task=task)


def _groups(out):
    """Reference (lambda_G, L_G) of the spec, written independently."""
    res = []
    for in_task in (False, True):
        names = [n for n in out.losses if (n in out.task) == in_task]
        lam = max(out.weight(n) for n in names)
        res.append((lam, sum(out.weight(n) / lam * out.losses[n] for n in names)))
    return res  # [(lam_A, L_A), (lam_C, L_C)]


def _flat(grads, params):
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])


def _ref_weights(variant, g_a, g_c, lam_a, lam_c, k=0.5, first="alignment"):
    """Weights from the spec's formulas in plain Python floats."""
    d, na, nc = float(g_a @ g_c), float(g_a @ g_a), float(g_c @ g_c)
    if d >= 0:
        return 1.0, 1.0, d, na, nc
    if variant == "gh":
        return 1 - d / na, 1 - d / nc, d, na, nc
    if variant == "pcgrad":  # PCGrad of lam_a g_a, lam_c g_c
        return 1 - d * lam_c / (lam_a * na), 1 - d * lam_a / (lam_c * nc), d, na, nc
    phi = math.acos(d / math.sqrt(na * nc))
    bmax = phi - math.pi / 2
    beta = k * bmax
    if variant == "gh++":
        w1, w2 = 1 + 2 * math.sin(beta / 2), 1 + 2 * math.sin((beta - bmax) / 2)
    else:
        n1, n2 = (math.sqrt(na), math.sqrt(nc)) if first == "alignment" else (math.sqrt(nc), math.sqrt(na))
        gamma = bmax - beta
        w1 = (math.sin(phi - beta) + n2 / n1 * math.sin(gamma)) / math.sin(phi)
        w2 = (math.sin(phi - gamma) + n1 / n2 * math.sin(beta)) / math.sin(phi)
    return (w1, w2, d, na, nc) if first == "alignment" else (w2, w1, d, na, nc)


def _reference(variant, mode, kind="conflict", first="alignment", k=0.5, **out_kw):
    """Expected grads: autograd of w_a lam_A L_A + w_c lam_C L_C over all params (float64)."""
    net, disc, proto, data = _setup()
    params = list(net.parameters()) + [proto]
    shared = list(net.parameters()) if mode == "all" else list(net.decode_head.parameters())
    out = _out(net, disc, proto, data, kind, **out_kw)
    (lam_a, loss_a), (lam_c, loss_c) = _groups(out)
    g_a = _flat(torch.autograd.grad(loss_a, shared, retain_graph=True, allow_unused=True), shared)
    g_c = _flat(torch.autograd.grad(loss_c, shared, retain_graph=True, allow_unused=True), shared)
    w_a, w_c, d, na, nc = _ref_weights(variant, g_a, g_c, lam_a, lam_c, k, first)
    expected = torch.autograd.grad(w_a * lam_a * loss_a + w_c * lam_c * loss_c, params, allow_unused=True)
    return dict(grads=expected, w_a=w_a, w_c=w_c, d=d, g_a=g_a, g_c=g_c, lam_a=lam_a, lam_c=lam_c)


def _run(combiner, kind="conflict", mode=None, scaler=None, dtype=F64, **out_kw):
    net, disc, proto, data = _setup(dtype)
    params = list(net.parameters()) + [proto]
    mode = mode or getattr(combiner, "shared_mode", "all")
    shared = shared_parameters(net, mode)
    out = _out(net, disc, proto, data, kind, **out_kw)
    logs = combiner.backward(out, params, shared, scaler=scaler)
    return net, disc, proto, params, logs


def _assert_grads(params, expected, rtol=1e-10):
    for p, e in zip(params, expected):
        if e is None:
            assert p.grad is None
        else:
            torch.testing.assert_close(p.grad, e, rtol=rtol, atol=1e-12)


# --------------------------------------------------------------------------------------- tests
def test_fixture_losses_conflict_in_both_modes():
    for mode in MODES:
        ref = _reference("gh", mode)
        assert ref["d"] < 0, mode
        assert ref["w_a"] > 1 and ref["w_c"] > 1
        assert _reference("gh", mode, kind="agree")["d"] > 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_assembled_gradient_equals_autograd_of_weighted_loss(variant, mode):
    ref = _reference(variant, mode)
    comb = HarmonizingCombiner(variant, shared_mode=mode)
    net, disc, proto, params, logs = _run(comb)
    _assert_grads(params, ref["grads"])
    # discriminator: its output feeds the alignment loss, but it is not in params
    assert all(p.grad is None for p in disc.parameters())
    assert float(logs["gh/w_align"]) == pytest.approx(ref["w_a"], rel=1e-10)
    assert float(logs["gh/w_task"]) == pytest.approx(ref["w_c"], rel=1e-10)
    assert float(logs["gh/conflict"]) == 1.0
    assert float(logs["gh/dot"]) == pytest.approx(ref["d"], rel=1e-10)
    cos = ref["d"] / float(ref["g_a"].norm() * ref["g_c"].norm())
    assert float(logs["gh/cos"]) == pytest.approx(cos, rel=1e-10)
    assert float(logs["gh/angle"]) == pytest.approx(math.degrees(math.acos(cos)), rel=1e-10)
    assert 90 < float(logs["gh/angle"]) < 180
    assert all(isinstance(v, torch.Tensor) for v in logs.values())


@pytest.mark.parametrize("first", ["alignment", "task"])
@pytest.mark.parametrize("variant", ["gh++", "gh++exact"])
def test_ghpp_order_and_range(variant, first):
    ref = _reference(variant, "all", first=first, k=0.3)
    comb = HarmonizingCombiner(variant, harmonic_range=0.3, first=first)
    _, _, _, params, logs = _run(comb)
    _assert_grads(params, ref["grads"])
    up, down = (
        (logs["gh/w_align"], logs["gh/w_task"]) if first == "alignment" else (logs["gh/w_task"], logs["gh/w_align"])
    )
    if variant == "gh++":
        assert float(up) > 1 > float(down)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_identity_without_conflict_equals_plain_sum(variant, mode):
    net, disc, proto, params, _ = _run(SumCombiner(), kind="agree")
    expected = [p.grad.clone() for p in params]
    _, disc2, _, params2, logs = _run(HarmonizingCombiner(variant, shared_mode=mode), kind="agree")
    assert float(logs["gh/conflict"]) == 0.0
    assert float(logs["gh/w_align"]) == 1.0 and float(logs["gh/w_task"]) == 1.0
    _assert_grads(params2, expected)
    assert all(p.grad is None for p in disc2.parameters())


def test_gh_update_on_shared_params_equals_pcgrad_and_is_orthogonal():
    # equal trade-offs (one term per group, weight 1): GH on the shared params == PCGrad
    names = ("source.ce", "target.neg")
    w = {"source.ce": 1.0, "target.neg": 1.0}
    ref = _reference("gh", "all", weights=w, names=names, task=("source.ce",))
    net, _, _, params, _ = _run(HarmonizingCombiner("gh"), weights=w, names=names, task=("source.ce",))
    shared = list(net.parameters())
    update = _flat([p.grad for p in shared], shared)
    g_a, g_c = ref["g_a"], ref["g_c"]
    torch.testing.assert_close(update, pcgrad(g_a, g_c), rtol=1e-10, atol=1e-12)
    d = g_a @ g_c
    ga_t = g_a - d / (g_c @ g_c) * g_c
    gc_t = g_c - d / (g_a @ g_a) * g_a
    torch.testing.assert_close(update, ga_t + gc_t, rtol=1e-10, atol=1e-12)
    scale = float(g_a.norm() * g_c.norm())
    assert abs(float(ga_t @ g_c)) / scale < 1e-12 and abs(float(gc_t @ g_a)) / scale < 1e-12


def test_pcgrad_variant_with_unequal_trade_offs_equals_pcgrad_of_weighted_gradients():
    names = ("source.ce", "target.neg")
    w = {"source.ce": 1.0, "target.neg": 0.3}
    ref = _reference("pcgrad", "all", weights=w, names=names, task=("source.ce",))
    net, _, _, params, _ = _run(HarmonizingCombiner("pcgrad"), weights=w, names=names, task=("source.ce",))
    shared = list(net.parameters())
    update = _flat([p.grad for p in shared], shared)
    torch.testing.assert_close(update, pcgrad(0.3 * ref["g_a"], ref["g_c"]), rtol=1e-10, atol=1e-12)
    # ... which differs from released GH (weights from unweighted gradients, trade-off after)
    _, _, _, params_gh, _ = _run(HarmonizingCombiner("gh"), weights=w, names=names, task=("source.ce",))
    assert not torch.allclose(_flat([p.grad for p in params_gh], params_gh), _flat([p.grad for p in params], params))


def test_gh_exact_harmonized_gradients_are_orthogonal_in_combiner():
    ref = _reference("gh++exact", "all")
    g_1, g_2 = ref["g_a"], ref["g_c"]  # first = alignment
    phi = math.acos(float(g_1 @ g_2 / (g_1.norm() * g_2.norm())))
    beta = 0.5 * (phi - math.pi / 2)
    n1, n2, s = g_1.norm(), g_2.norm(), math.sin(phi)
    r_1 = math.sin(phi - beta) / s * g_1 + n1 / n2 * math.sin(beta) / s * g_2
    r_2 = math.sin(phi - beta) / s * g_2 + n2 / n1 * math.sin(beta) / s * g_1
    assert abs(float(r_1 @ r_2)) / float(r_1.norm() * r_2.norm()) < 1e-6
    torch.testing.assert_close(ref["w_a"] * g_1 + ref["w_c"] * g_2, r_1 + r_2)
    net, _, _, params, _ = _run(HarmonizingCombiner("gh++exact"))
    shared = list(net.parameters())
    lam_a, lam_c = ref["lam_a"], ref["lam_c"]
    expected = ref["w_a"] * lam_a * g_1 + ref["w_c"] * lam_c * g_2
    torch.testing.assert_close(_flat([p.grad for p in shared], shared), expected, rtol=1e-10, atol=1e-12)


def test_multi_term_groups_use_normalised_group_losses():
    # lambda_A = 0.5 (largest alignment weight), lambda_C = 1: scaling every alignment weight by 3
    # leaves GH's weights unchanged (computed from unweighted group losses) and triples lambda_A.
    _, _, _, _, logs = _run(HarmonizingCombiner("gh"))
    w3 = {n: (3 * w if n not in TASK else w) for n, w in WEIGHTS.items()}
    ref3 = _reference("gh", "all", weights=w3)
    assert ref3["lam_a"] == pytest.approx(1.5)
    _, _, _, params3, logs3 = _run(HarmonizingCombiner("gh"), weights=w3)
    _assert_grads(params3, ref3["grads"])
    torch.testing.assert_close(logs3["gh/w_align"], logs["gh/w_align"])
    torch.testing.assert_close(logs3["gh/w_task"], logs["gh/w_task"])
    # a zero-weight term is dropped; the others keep their relative weights
    w0 = dict(WEIGHTS, **{"target.adv": 0.0})
    ref0 = _reference(
        "gh",
        "all",
        weights={n: v for n, v in w0.items() if n != "target.adv"},
        names=[n for n in WEIGHTS if n != "target.adv"],
    )
    _, disc0, _, params0, _ = _run(HarmonizingCombiner("gh"), weights=w0)
    _assert_grads(params0, ref0["grads"])
    assert all(p.grad is None for p in disc0.parameters())


@pytest.mark.parametrize("variant", VARIANTS)
def test_empty_group_falls_back_to_sum(variant):
    # no alignment term / all alignment weights 0 / no task term (everything is alignment)
    for kw in ({"names": TASK}, {"weights": dict(WEIGHTS, **{n: 0.0 for n in WEIGHTS if n not in TASK})}, {"task": ()}):
        _, _, _, ps, _ = _run(SumCombiner(), **kw)
        expected = [None if p.grad is None else p.grad.clone() for p in ps]
        _, disc2, _, params2, logs2 = _run(HarmonizingCombiner(variant), **kw)
        assert logs2 == {}
        _assert_grads(params2, expected, rtol=0)
        assert all(p.grad is None for p in disc2.parameters())
    assert expected[-1] is not None  # 'task=()': proto gets the sum's gradient
    _, _, _, ps, _ = _run(HarmonizingCombiner(variant), names=TASK)
    assert ps[-1].grad is None  # proto unused by the task group


def test_sum_combiner_matches_total_and_leaves_discriminator_alone():
    net, disc, proto, data = _setup()
    params = list(net.parameters()) + [proto]
    out = _out(net, disc, proto, data)
    expected = torch.autograd.grad(out.total(), params, retain_graph=True)
    assert SumCombiner().backward(out, params, []) == {}
    _assert_grads(params, expected, rtol=1e-12)
    assert all(p.grad is None for p in disc.parameters())


@pytest.mark.parametrize("mode", MODES)
def test_grad_scaler_scales_grads_and_leaves_weights_invariant(mode):
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ref = _reference("gh", mode)
    _, disc, _, params, logs = _run(HarmonizingCombiner("gh", shared_mode=mode), scaler=scaler)
    _assert_grads(params, [None if e is None else e * 2.0**10 for e in ref["grads"]])
    assert float(logs["gh/w_align"]) == pytest.approx(ref["w_a"], rel=1e-10)
    assert float(logs["gh/w_task"]) == pytest.approx(ref["w_c"], rel=1e-10)
    assert float(logs["gh/dot"]) == pytest.approx(ref["d"], rel=1e-10)  # reported unscaled
    assert all(p.grad is None for p in disc.parameters())


@pytest.mark.parametrize("mode", MODES)
def test_float32_model_and_accumulation(mode):
    comb = HarmonizingCombiner("gh++exact", shared_mode=mode)
    net, disc, proto, data = _setup(torch.float32)
    params = list(net.parameters()) + [proto]
    for p in params:  # backward semantics: gradients accumulate into existing .grad
        p.grad = torch.ones_like(p)
    logs = comb.backward(_out(net, disc, proto, data), params, shared_parameters(net, mode))
    assert all(p.grad.dtype == torch.float32 for p in params)
    assert logs["gh/cos"].dtype == F64  # statistics accumulated in float64
    ref = _reference("gh++exact", mode)
    for p, e in zip(params, ref["grads"]):
        torch.testing.assert_close(p.grad.double(), e + 1, rtol=1e-4, atol=1e-5)


def test_unused_and_frozen_params():
    net, disc, proto, data = _setup()
    extra = nn.Parameter(torch.zeros(2, dtype=F64))  # in the optimiser but used by no loss
    frozen = nn.Parameter(torch.zeros(2, dtype=F64), requires_grad=False)
    params = list(net.parameters()) + [proto, extra, frozen]
    HarmonizingCombiner("gh").backward(_out(net, disc, proto, data), params, list(net.parameters()))
    assert extra.grad is None and frozen.grad is None
    assert proto.grad is not None


def test_invalid_arguments():
    with pytest.raises(ValueError):
        HarmonizingCombiner("sum")
    with pytest.raises(ValueError):
        HarmonizingCombiner("gh", shared_mode="encoder")
    with pytest.raises(ValueError):
        HarmonizingCombiner("gh++", first="both")
    with pytest.raises(ValueError):
        HarmonizingCombiner("gh++", harmonic_range=1.5)
    net, disc, proto, data = _setup()
    with pytest.raises(ValueError, match="subset"):
        HarmonizingCombiner("gh").backward(
            _out(net, disc, proto, data), list(net.decode_head.parameters()), list(net.parameters())
        )
    with pytest.raises(ValueError):
        shared_parameters(net, "encoder")


def test_build_combiner_from_config():
    assert isinstance(build_combiner(BalancingConfig()), SumCombiner)
    for name in VARIANTS:
        cfg = BalancingConfig(combiner=name, gh=GHConfig(harmonic_range=0.3, params="decoder", first="task"))
        c = build_combiner(cfg)
        assert isinstance(c, HarmonizingCombiner)
        assert (c.variant, c.k, c.shared_mode, c.first) == (name, 0.3, "decoder", "task")
    net = Net()
    assert len(shared_parameters(net, "decoder")) == 2 and len(shared_parameters(net, "all")) == 4
