"""The classification task on the one trainer: DANN, CDAN+E and MCD against their equations (GRL
gradient, entropy-aware conditional loss, MCD's A/B/C update order), GH through the segmentation
combiner, runs end to end, the digits bench cells, bad inputs naming file and line."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from balda.balancing.combine import HarmonizingCombiner
from balda.config import load_config, resolve_config
from balda.engine.trainer import Trainer


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from balda.data.digits import generate_digits

    out = tmp_path_factory.mktemp("digits")
    generate_digits(out, seed=0, size=16, n_per_class=4)
    return out


def _cfg(digits, tmp_path, config="digits/source_only", *over, iters=2, name="run"):
    return load_config(
        resolve_config(config),
        [
            f"name={name}",
            f"out_dir={tmp_path}",
            f"train.iters={iters}",
            "train.log_every=1",
            "train.ckpt_every=0",
            "train.progress=false",
            "train.tensorboard=false",
            "data.batch_source=4",
            "data.batch_target=4",
            "model.width=4",
            "model.bottleneck_dim=8",
            f"data.source.root={digits / 'source/train.txt'}",
            f"data.target.root={digits / 'target/train.txt'}",
            f"data.val.root={digits / 'target/test.txt'}",
            *over,
        ],
    )


@pytest.mark.parametrize(
    "config,over",
    [
        ("digits/source_only", ()),
        ("digits/oracle", ()),
        ("digits/dann", ("balancing.combiner=gh",)),
        ("digits/cdan_e", ("balancing.combiner=gh++",)),
        ("digits/mcd", ("balancing.combiner=gh",)),
        ("digits/dann", ("balancing.class_weights=gbw",)),
    ],
)
def test_classification_runs_end_to_end(digits, tmp_path, config, over):
    cfg = _cfg(digits, tmp_path, config, *over)
    tr = Trainer(cfg)
    metrics = tr.fit()
    final = json.loads((cfg.run_dir / "final_metrics.json").read_text())
    n_val = len((digits / "target/test.txt").read_text().splitlines())
    assert final["step"] == 2 and 0.0 <= final["accuracy"] <= 1.0 and final["num_images"] == n_val
    assert abs(final["accuracy"] - metrics.accuracy) < 1e-12
    assert len(final["per_class"]) == 10 and len(final["confusion"]) == 10
    assert (cfg.run_dir / "plots" / "class_accuracy.png").is_file()
    assert (cfg.run_dir / "plots" / "confusion.png").is_file()
    if any("combiner=gh" in o for o in over):
        assert isinstance(tr.combiner, HarmonizingCombiner)  # the segmentation combiner object
        recs = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
        assert any("gh/angle" in r for r in recs)


def test_accuracy_metrics_from_the_confusion_matrix():
    import numpy as np

    from balda.engine.classification import ClsMetrics

    conf = np.array([[3, 1, 0], [0, 2, 2], [0, 0, 0]])
    m = ClsMetrics(conf, ("a", "b", "c"))
    assert m.accuracy == pytest.approx(5 / 8)
    assert m.mean_class_accuracy == pytest.approx((3 / 4 + 2 / 4) / 2)  # c is absent: not averaged
    d = m.to_dict()
    assert d["per_class"]["c"] is None and d["num_images"] == 8 and m.score == m.accuracy


# --------------------------------------------------------------------------------- DANN / CDAN+E
def _double_strategy(digits, tmp_path, config, *over):
    tr = Trainer(_cfg(digits, tmp_path, config, *over))
    tr.model.double()
    tr.strategy.double()
    batch = next(iter(tr._loader()))
    for part in ("source", "target"):
        batch[part]["image"] = batch[part]["image"].double()
    return tr, batch


def test_dann_gradient_through_the_reversal_is_minus_lambda_times_the_plain_one(digits, tmp_path):
    """d L_a / d theta_F as trained = -l(p) x the gradient of the same loss without the reversal
    layer; the discriminator's own gradient is not reversed (float64)."""
    from balda.methods.domain_losses import domain_adversarial_loss

    tr, batch = _double_strategy(digits, tmp_path, "digits/dann")
    model, st = tr.model, tr.strategy
    step = 1  # p = 1/2: l = 2 / (1 + e^-5) - 1
    lam = 2.0 / (1.0 + torch.exp(torch.tensor(-10.0 * step / 2, dtype=torch.float64))) - 1.0
    assert st.reversal(step) == pytest.approx(float(lam), rel=1e-12)
    feat = list(model.bottleneck.parameters())
    disc = list(st.discriminator.parameters())
    st.discriminator.eval()  # no dropout: the two passes see the same discriminator
    model.eval()
    out = st.compute_losses(model, batch, step)
    g_rev = torch.autograd.grad(out.losses["domain.adv"], feat + disc)
    xs, xt = batch["source"]["image"], batch["target"]["image"]
    f = model(torch.cat([xs, xt])).features
    n = xs.shape[0]
    plain = domain_adversarial_loss(st.discriminator(f[:n]), st.discriminator(f[n:]))
    g_plain = torch.autograd.grad(plain, feat + disc)
    for a, b in zip(g_rev[: len(feat)], g_plain[: len(feat)]):
        torch.testing.assert_close(a, -lam * b, rtol=1e-9, atol=1e-12)
    for a, b in zip(g_rev[len(feat) :], g_plain[len(feat) :]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert out.task == ("source.ce",) and out.weight("domain.adv") == 1.0


def test_cdan_e_loss_is_the_entropy_weighted_conditional_bce(digits, tmp_path):
    """CDAN+E's L_a = 1/2 [sum_i w_i^s BCE(D(f_i (x) g_i), 1) + sum_j w_j^t BCE(D(f_j (x) g_j), 0)],
    w = (1 + e^-H(g)) normalised per domain, g the detached softmax (float64 closed form)."""
    tr, batch = _double_strategy(digits, tmp_path, "digits/cdan_e")
    model, st = tr.model, tr.strategy
    st.eval()
    model.eval()
    out = st.compute_losses(model, batch, 1)
    xs, xt = batch["source"]["image"], batch["target"]["image"]
    o = model(torch.cat([xs, xt]))
    f, z = o.features, o.logits
    g = z.softmax(1)
    h = (f[:, :, None] * g[:, None, :]).flatten(1)  # bottleneck 8 x 10 classes < 4096: the exact map
    H = -(g * g.clamp_min(1e-300).log()).sum(1)
    w = 1 + torch.exp(-H)
    n = xs.shape[0]
    ws, wt = w[:n] / w[:n].sum(), w[n:] / w[n:].sum()
    d = st.discriminator(h).reshape(-1)
    bce_s = F.binary_cross_entropy_with_logits(d[:n], torch.ones(n, dtype=d.dtype), reduction="none")
    bce_t = F.binary_cross_entropy_with_logits(d[n:], torch.zeros(len(d) - n, dtype=d.dtype), reduction="none")
    ref = 0.5 * ((ws * bce_s).sum() + (wt * bce_t).sum())
    torch.testing.assert_close(out.losses["domain.adv"], ref, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------------------------ MCD
def test_mcd_one_iteration_is_steps_a_b_then_c_num_k_times(digits, tmp_path):
    """One trainer iteration of MCD equals, with plain SGD: A (F, G1, G2 on CE1 + CE2), B (G1, G2
    only, on CE1 + CE2 - d(x_t)), then num_k times C (F only, on d(x_t)), in this order."""
    over = (
        "optim.momentum=0.0",
        "optim.weight_decay=0.0",
        "optim.head_lr_mult=1.0",
        "optim.inv_gamma=0.0",
        "optim.lr=0.05",
        "method.mcd.num_k=2",
    )
    tr = Trainer(_cfg(digits, tmp_path, "digits/mcd", *over))
    ref = copy.deepcopy(tr.model)
    batch = next(iter(tr._loader()))
    tr.train_step(batch)

    x = torch.cat([batch["source"]["image"], batch["target"]["image"]])
    y = batch["source"]["label"]
    n = len(y)
    gen = [*ref.backbone.parameters(), *ref.bottleneck.parameters()]
    cls = list(ref.classifiers.parameters())

    def sgd(params, loss):
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= 0.05 * g

    def disc(o):
        return (o.logits[n:].softmax(1) - o.logits2[n:].softmax(1)).abs().mean()

    o = ref(x)
    sgd(gen + cls, F.cross_entropy(o.logits[:n], y) + F.cross_entropy(o.logits2[:n], y))  # A
    o = ref(x)
    sgd(cls, F.cross_entropy(o.logits[:n], y) + F.cross_entropy(o.logits2[:n], y) - disc(o))  # B
    for _ in range(2):  # C, num_k times
        o = ref(x)
        sgd(gen, disc(o))
    for (name, a), b in zip(tr.model.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_mcd_phases_and_frozen_parameters(digits, tmp_path):
    tr = Trainer(_cfg(digits, tmp_path, "digits/mcd", "method.mcd.num_k=3"))
    st = tr.strategy
    assert st.phases(0) == ("A", "B", "C0", "C1", "C2")
    batch = next(iter(tr._loader()))
    gen = {id(p) for p in [*tr.model.backbone.parameters(), *tr.model.bottleneck.parameters()]}
    cls = {id(p) for p in tr.model.classifiers.parameters()}
    b = st.compute_phase(tr.model, batch, 0, "B")
    assert {id(p) for p in b.frozen} == gen and {id(p) for p in b.shared} == gen  # GH measured on F
    assert b.task == ("source.ce_b",) and set(b.losses) == {"source.ce_b", "target.maxdis"}
    c = st.compute_phase(tr.model, batch, 0, "C0")
    assert {id(p) for p in c.frozen} == cls and c.task == ()
    a = st.compute_phase(tr.model, batch, 0, "A")
    assert not a.frozen and set(a.losses) == {"source.ce"}


def test_mcd_needs_two_heads(digits, tmp_path):
    from balda.core.errors import ConfigError

    with pytest.raises(ConfigError, match="num_heads=2"):
        Trainer(_cfg(digits, tmp_path, "digits/mcd", "model.num_heads=1"))


# ------------------------------------------------------------------------------------ bad inputs
def test_a_label_outside_the_classes_names_the_list_and_line(digits, tmp_path):
    from balda.core.errors import DataError

    lines = (digits / "source/train.txt").read_text().splitlines()
    lines[2] = lines[2].rsplit(None, 1)[0] + " 12"
    (digits / "source" / "bad.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"bad\.txt.*3|line 3"):
        Trainer(_cfg(digits, tmp_path, "digits/source_only", f"data.source.root={digits / 'source/bad.txt'}"))
    (digits / "source" / "bad.txt").unlink()


def test_a_missing_image_of_the_list_names_the_file_and_line(digits, tmp_path):
    from balda.core.errors import DataError

    lines = (digits / "target/test.txt").read_text().splitlines()
    lines[1] = "images/does_not_exist.png 3"
    (digits / "target" / "broken.txt").write_text("\n".join(lines) + "\n")
    cfg = _cfg(digits, tmp_path, "digits/source_only", f"data.val.root={digits / 'target/broken.txt'}")
    cfg.data.val.on_error = "raise"
    with pytest.raises(DataError, match=r"broken\.txt:2: image .*does_not_exist\.png not found"):
        Trainer(cfg).fit()
    (digits / "target" / "broken.txt").unlink()


# ----------------------------------------------------------------------------------------- bench
def test_digits_bench_cells_use_the_image_lists_and_their_controls(tmp_path):
    from pathlib import Path

    from balda.experiments.catalog import Cell, benchmark_of, cell_overrides, entries, entry

    cat = entries()
    for base in ("dann", "cdan_e", "mcd"):
        assert cat[f"digits/{base}+gh"].controls == (f"digits/{base}",)
        assert cat[f"digits/{base}+gh++"].controls == (f"digits/{base}", f"digits/{base}+gh")
        assert "balancing.combiner=gh++" in cat[f"digits/{base}+gh++"].overrides
    assert benchmark_of(["digits/source_only", "digits/mcd+gh"]).metric == "accuracy"
    o = cell_overrides(Cell("digits/mcd+gh", 1), Path("d"), tmp_path)
    assert "data.source.root=d/source/train.txt" in o and "data.val.root=d/target/test.txt" in o
    assert Cell("digits/mcd+gh", 1).name == "digits_mcd-gh_s1"
    assert entry("digits/mcd").benchmark == "digits" and entry("advent").benchmark == "streets"
    from balda.core.errors import ConfigError

    with pytest.raises(ConfigError, match="mixes benchmarks"):
        benchmark_of(["advent", "digits/dann"])
