"""ActiveStrategy (src/balda/active/strategy.py): each loss against a brute-force computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from balda.active.strategy import ActiveStrategy, label_interior_mask, local_consistency_loss, negative_learning_loss
from balda.config import ActiveConfig
from balda.methods.base import StepOutput, Strategy
from balda.methods.losses import weighted_cross_entropy
from balda.models.base import Segmentor, SegOutput

K = 3


class TinySeg(Segmentor):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.num_classes = K
        self.feature_channels = 4
        self.backbone = nn.Conv2d(3, 4, 3, padding=1)
        self.decode_head = nn.Conv2d(4, K, 1)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        f = torch.relu(self.backbone(x))
        return SegOutput(f, self.decode_head(f) * 2)


class SourceCE(Strategy):
    def __init__(self, model):
        super().__init__(model)
        self.after = 0

    def compute_losses(self, model, batch, step):
        logits = model(batch["source"]["image"]).logits
        return StepOutput(
            losses={"source.ce": weighted_cross_entropy(logits, batch["source"]["label"])},
            logs={"x": torch.tensor(1.0)},
        )

    def after_step(self, model, step):
        self.after += 1
        return {"base": torch.tensor(step)}


def _batch(seed=0, B=2, H=6, W=7):
    g = torch.Generator().manual_seed(seed)
    src_lab = torch.randint(0, K, (B, H, W), generator=g)
    src_lab[:, :2, :3] = 1  # some interior pixels
    src_lab[0, 0, 0] = 255
    tgt_lab = torch.full((B, H, W), 255)
    tgt_lab[:, 2:5, 2:5] = torch.randint(0, K, (B, 3, 3), generator=g)
    return {
        "source": {"image": torch.randn(B, 3, H, W, generator=g), "label": src_lab, "index": torch.arange(B)},
        "target": {"image": torch.randn(B, 3, H, W, generator=g), "label": tgt_lab, "index": torch.arange(B)},
    }


def ref_negative(logits):
    p = torch.softmax(logits.double(), 1).numpy()
    terms = [-math.log(1 - v + 1e-6) for v in p.ravel() if v < 0.05]
    return sum(terms) / max(len(terms), 1)


def ref_local_consistency(logits, labels):
    p = torch.softmax(logits.double(), 1).numpy()
    lab = labels.numpy()
    B, _, H, W = p.shape
    vals = []
    for b in range(B):
        for y in range(H):
            for x in range(W):
                if lab[b, y, x] == 255:
                    continue
                nb = [
                    (min(max(y + dy, 0), H - 1), min(max(x + dx, 0), W - 1)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                ]
                inside = [
                    (y + dy, x + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if 0 <= y + dy < H and 0 <= x + dx < W
                ]
                if any(lab[b, yy, xx] != lab[b, y, x] for yy, xx in inside):
                    continue  # on a label boundary (or next to ignore)
                mean = sum(p[b, :, yy, xx] for yy, xx in nb) / 9.0
                vals.append(np.abs(p[b, :, y, x] - mean).sum())
    return sum(vals) / max(len(vals), 1)


def test_negative_learning_matches_reference():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 4, 6, generator=g) * 4
    assert negative_learning_loss(logits).item() == pytest.approx(ref_negative(logits), rel=1e-5)
    # No entry below the threshold: zero, not NaN.
    assert negative_learning_loss(torch.zeros(1, 2, 3, 3)).item() == 0.0


def test_local_consistency_matches_reference():
    b = _batch(2)
    logits = torch.randn(2, K, 6, 7, generator=torch.Generator().manual_seed(3)) * 3
    lab = b["source"]["label"]
    got = local_consistency_loss(logits, lab).item()
    assert got == pytest.approx(ref_local_consistency(logits, lab), rel=1e-5)
    m = label_interior_mask(lab)
    assert m.any() and not m[0, 0, 0]
    assert local_consistency_loss(logits, torch.full_like(lab, 255)).item() == 0.0


class FixedWeights(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("w", torch.tensor([0.5, 2.0, 1.0]))

    def forward(self, logits, labels):
        return self.w


@pytest.mark.parametrize("reuse", [True, False])
def test_active_strategy_losses_against_reference(reuse):
    model = TinySeg()
    base = SourceCE(model)
    cfg = ActiveConfig(enabled=True, lambda_labelled=1.5, lambda_negative=1.0, lambda_consistency=0.1)
    strat = ActiveStrategy(
        base, model, lambda term: FixedWeights() if term == "active" else None, cfg, reuse_forward=reuse
    )
    assert strat.uses_target_labels and isinstance(strat.active_ce.weighting, FixedWeights)
    batch = _batch()
    model.calls = 0
    out = strat.compute_losses(model, batch, 0)
    assert set(out.losses) == {"source.ce", "active.ce", "active.neg", "source.lc"}
    assert "active.ce" in out.task and "source.ce" in out.task and "active.neg" not in out.task
    assert out.weight("active.ce") == 1.5 and out.weight("active.neg") == 1.0 and out.weight("source.lc") == 0.1
    assert model.calls == (2 if reuse else 3)  # the base's source forward is reused
    with torch.no_grad():
        tl = model(batch["target"]["image"]).logits.double()
        sl = model(batch["source"]["image"]).logits.double()
    # Brute-force weighted CE over labelled target pixels (mean over labelled pixels).
    w = [0.5, 2.0, 1.0]
    lab = batch["target"]["label"]
    logp = torch.log_softmax(tl, 1)
    terms = [
        -w[int(lab[b, y, x])] * logp[b, int(lab[b, y, x]), y, x].item()
        for b in range(2)
        for y in range(6)
        for x in range(7)
        if lab[b, y, x] != 255
    ]
    assert out.losses["active.ce"].item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    assert out.losses["active.neg"].item() == pytest.approx(ref_negative(tl), rel=1e-5)
    assert out.losses["source.lc"].item() == pytest.approx(
        ref_local_consistency(sl, batch["source"]["label"]), rel=1e-5
    )
    out.total().backward()
    assert model.decode_head.weight.grad is not None
    assert strat.after_step(model, 3)["base"] == 3 and base.after == 1
    assert strat.eval_model(model) is model
    assert "base.after" not in out.logs and "x" in out.logs


def test_zero_lambdas_skip_terms_and_unlabelled_target():
    model = TinySeg()
    cfg = ActiveConfig(enabled=True, lambda_negative=0.0, lambda_consistency=0.0)
    strat = ActiveStrategy(SourceCE(model), model, None, cfg)
    batch = _batch()
    batch["target"]["label"] = torch.full_like(batch["target"]["label"], 255)
    out = strat.compute_losses(model, batch, 0)
    assert set(out.losses) == {"source.ce", "active.ce"}
    assert out.losses["active.ce"].item() == 0.0 and out.losses["active.ce"].requires_grad
    # State dict includes the base strategy (checkpointing).
    assert isinstance(strat.state_dict(), dict)
