"""CPSL: Sinkhorn, memory bank, rectification, warps, losses, preparation and one full step."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from balda.methods.cpsl import (
    CPSLConfig,
    CPSLStrategy,
    MemoryBank,
    SelfLabelingHead,
    box_masks,
    crop_theta,
    distill_losses,
    flip_averaged_logits,
    prototype_consistency,
    random_affine,
    rce_loss,
    rectify,
    self_labeling_loss,
    sinkhorn_balanced,
    warp_images,
    warp_labels,
    warp_maps,
)
from balda.methods.cpsl.prepare import (
    PreparedError,
    check_prepared_dataset,
    load_prepared,
    p0_path,
    prepare_cpsl,
    prepare_from_checkpoint,
)
from balda.models.base import Segmentor, SegOutput

MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]
K = 4


# ------------------------------------------------------------------------------------ fixtures
class TinySeg(Segmentor):
    """Stride-4 conv segmentor with BatchNorm; counts its forward calls."""

    def __init__(self, num_classes: int = K, width: int = 6):
        super().__init__()
        self.num_classes = num_classes
        self.feature_channels = width
        self.backbone = nn.Sequential(
            nn.Conv2d(3, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, width, 3, 2, 1), nn.ReLU()
        )
        self.decode_head = nn.Conv2d(width, num_classes, 1)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        f = self.backbone(x)
        return SegOutput(features=f, logits=self.decode_head(f))


class FakeTarget:
    """Dataset contract: len, names, load(i) -> (uint8 HxWx3, None)."""

    def __init__(self, n: int = 5, H: int = 32, W: int = 32, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.images = [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(n)]
        self.names = [f"img{i:02d}" for i in range(n)]

    def __len__(self):
        return len(self.images)

    def load(self, i):
        return self.images[i], None


def make_model(seed: int = 0) -> TinySeg:
    torch.manual_seed(seed)
    return TinySeg()


def make_batch(B: int = 2, H: int = 32, W: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    xs = (torch.rand(B, 3, H, W, generator=g) * 255 - mean) / std
    ds = FakeTarget(n=5, H=H, W=W)
    xt = torch.stack([torch.from_numpy(ds.images[i]).permute(2, 0, 1).float() for i in (3, 1)])
    xt = (xt - mean) / std
    ys = torch.randint(0, K, (B, H // 8, W // 8), generator=g).repeat_interleave(8, 1).repeat_interleave(8, 2)
    ys[:, :2] = 255
    return {
        "source": {"image": xs, "label": ys, "index": torch.arange(B)},
        "target": {"image": xt, "label": torch.full((B, H, W), 255, dtype=torch.long), "index": torch.tensor([3, 1])},
    }


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cpsl_prep")
    prepare_cpsl(make_model(1), FakeTarget(), out, MEAN, STD, "cpu", pseudo_stride=4, progress=False)
    return out


def make_strategy(prepared_dir, model, **kw) -> CPSLStrategy:
    cfg = CPSLConfig(prepared=str(prepared_dir), bank_size=48, samples_per_image=16, **kw)
    return CPSLStrategy(
        model, None, cfg, K, torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1), seed=3
    )


# ------------------------------------------------------------------------------------ Sinkhorn
def swav_sinkhorn(scores, eps, n_iter):
    """Textbook SwAV (Caron et al. 2020, Algorithm 1) in float64."""
    Q = torch.exp(scores / eps).t()
    Kc, N = Q.shape
    Q = Q / Q.sum()
    for _ in range(n_iter):
        Q = Q / Q.sum(dim=1, keepdim=True) / Kc
        Q = Q / Q.sum(dim=0, keepdim=True) / N
    return (Q * N).t()


def test_sinkhorn_rows_sum_to_one():
    g = torch.Generator().manual_seed(0)
    S = torch.rand(300, 7, generator=g) * 2 - 1
    r = torch.rand(7, generator=g) + 0.1
    for n_iter in (1, 3, 10):
        Q = sinkhorn_balanced(S, r, 0.05, n_iter)
        assert Q.shape == (300, 7) and Q.dtype == torch.float32
        assert torch.allclose(Q.sum(1), torch.ones(300), atol=1e-5)
        assert (Q >= 0).all()


def test_sinkhorn_marginal_converges_to_prior():
    # cosine scores of unit features vs unit prototypes (what CPSL feeds it), epsilon 0.05 as CPSL
    g = torch.Generator().manual_seed(1)
    u = F.normalize(torch.randn(2000, 16, generator=g, dtype=torch.float64), dim=1)
    c = F.normalize(torch.randn(6, 16, generator=g, dtype=torch.float64), dim=1)
    S = u @ c.t()
    r = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.04, 0.01], dtype=torch.float64)
    errs = [(sinkhorn_balanced(S, r, 0.05, n).mean(0) - r).abs().sum().item() for n in (1, 3, 10, 50)]
    assert errs[-1] < 1e-3
    assert errs[0] > errs[-1]
    assert errs[2] <= errs[1] + 1e-12


def test_sinkhorn_uniform_prior_is_swav():
    g = torch.Generator().manual_seed(2)
    S = torch.rand(500, 5, generator=g, dtype=torch.float64) * 2 - 1
    r = torch.full((5,), 1 / 5, dtype=torch.float64)
    for n_iter in (1, 3, 7):
        torch.testing.assert_close(
            sinkhorn_balanced(S, r, 0.05, n_iter), swav_sinkhorn(S, 0.05, n_iter), rtol=1e-9, atol=1e-12
        )


def test_sinkhorn_stable_small_epsilon_large_scores():
    g = torch.Generator().manual_seed(3)
    S = torch.randn(400, 19, generator=g) * 50  # exp(S/eps) overflows float64 without log-domain
    r = torch.softmax(torch.randn(19, generator=g), 0)
    r[5] = 0.0  # an absent class
    Q = sinkhorn_balanced(S, r, epsilon=0.01, n_iter=50)
    assert torch.isfinite(Q).all()
    assert torch.allclose(Q.sum(1), torch.ones(400), atol=1e-4)
    assert Q[:, 5].abs().max() == 0


# ---------------------------------------------------------------------------------- memory bank
def test_memory_bank_fifo_and_wraparound():
    bank = MemoryBank(5, 2)
    assert len(bank) == 0 and bank.valid().shape == (0, 2)

    def rows(a, b):
        return torch.arange(a, b, dtype=torch.float32)[:, None].repeat(1, 2)

    bank.push(rows(0, 3))
    assert torch.equal(bank.ordered(), rows(0, 3)) and bank.ptr == 3
    bank.push(rows(3, 7))  # wraps: 0 and 1 are dropped
    assert len(bank) == 5 and bank.ptr == 2
    assert torch.equal(bank.ordered(), rows(2, 7))
    assert torch.equal(bank.data[:, 0], torch.tensor([5.0, 6.0, 2.0, 3.0, 4.0]))
    bank.push(rows(7, 8))
    assert torch.equal(bank.ordered(), rows(3, 8))
    bank.push(rows(10, 22))  # more than the size at once: newest 5 kept
    assert torch.equal(bank.ordered(), rows(17, 22)) and bank.ptr == 0
    # checkpoint round trip (storage + host pointer)
    bank.push(rows(30, 32))
    other = MemoryBank(5, 2)
    other.load_state_dict(bank.state_dict())
    assert other.ptr == bank.ptr == 2 and other.count == 5
    assert torch.equal(other.ordered(), torch.cat([rows(19, 22), rows(30, 32)]))


# ------------------------------------------------------------------------- rectification / RCE
def test_rectify_is_argmax_of_product():
    g = torch.Generator().manual_seed(4)
    a = torch.softmax(torch.randn(2, 5, 6, 7, generator=g) * 3, 1)
    p0 = torch.softmax(torch.randn(2, 5, 6, 7, generator=g) * 3, 1)
    y = rectify(a, p0)
    assert torch.equal(y, (a * p0).argmax(1))
    # the product can disagree with both factors
    assert not torch.equal(y, p0.argmax(1)) or not torch.equal(y, a.argmax(1))
    prod = (a * p0).double()
    conf = prod.max(1).values / prod.sum(1)
    y_t = rectify(a, p0, threshold=0.6)
    assert torch.equal(y_t == 255, conf < 0.6)
    assert torch.equal(y_t[conf >= 0.6], y[conf >= 0.6])


def test_rce_closed_form():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 4, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 4, (2, 8, 8), generator=g)
    labels[0, :3] = 255
    loss = rce_loss(logits, labels)
    up = F.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)
    p = torch.softmax(up, 1)
    valid = labels != 255
    ref = 0.0
    for b, i, j in zip(*torch.nonzero(valid, as_tuple=True)):
        ref = ref + (-math.log(1e-4)) * (1 - p[b, labels[b, i, j], i, j])
    ref = ref / valid.sum()
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-6, atol=1e-7)
    # equals the released code's form -sum_k p_k log clamp(onehot, 1e-4)
    onehot = F.one_hot(labels.clamp(max=3), 4).permute(0, 3, 1, 2).double().clamp(min=1e-4)
    alt = (-(p * onehot.log()).sum(1) * valid).sum() / valid.sum()
    torch.testing.assert_close(loss.double(), alt.detach(), rtol=1e-6, atol=1e-7)
    empty = rce_loss(logits, torch.full_like(labels, 255))
    assert empty.item() == 0 and empty.requires_grad


# ----------------------------------------------------------------------------------- geometry
def test_label_warp_consistent_with_image_warp():
    H, W = 24, 40
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    coords = torch.stack([yy, xx])[None].repeat(6, 1, 1, 1)  # the image encodes its pixel coordinates
    labels = (yy * W + xx).long()[None].repeat(6, 1, 1)  # a label map made from the image
    g = torch.Generator().manual_seed(6)
    theta = random_affine(6, g, "cpu", aspect=W / H, scale=(0.6, 1.0), max_rotate=15.0)
    img_w = warp_images(coords, theta)  # bilinear, zero padding
    lab_w = warp_labels(labels, theta, ignore=-1)  # nearest
    maps_w, valid = warp_maps(coords, theta)  # bilinear, border padding
    inside = lab_w != -1
    assert inside.float().mean() > 0.6
    assert torch.equal(inside, valid)  # sampling point inside the image <=> labelled
    ly, lx = (lab_w // W).float(), (lab_w % W).float()
    # nearest label = the pixel whose centre is closest to the (exact, bilinear) sampled coordinate
    assert ((ly - maps_w[:, 0]).abs()[valid] <= 0.5 + 1e-4).all()
    assert ((lx - maps_w[:, 1]).abs()[valid] <= 0.5 + 1e-4).all()
    # between pixel centres the image warp samples exactly these coordinates
    interior = valid & (maps_w[:, 0] > 0) & (maps_w[:, 0] < H - 1) & (maps_w[:, 1] > 0) & (maps_w[:, 1] < W - 1)
    assert interior.float().mean() > 0.5
    for ch in range(2):
        torch.testing.assert_close(img_w[:, ch][interior], maps_w[:, ch][interior], atol=1e-3, rtol=0)
    # the label is the rounded sampled coordinate (ties aside)
    far_from_tie = ((maps_w - maps_w.floor() - 0.5).abs() > 1e-3).all(1) & valid
    assert torch.equal(ly[far_from_tie], maps_w[:, 0].round().clamp(0, H - 1)[far_from_tie])
    # the same warp at a coarser resolution (feature maps) samples the same physical points
    small = warp_labels(labels, theta, size=(H // 4, W // 4), ignore=-1)
    full_at_centres = lab_w[:, 2::4, 2::4]
    close = (small == full_at_centres) | (small == -1) | (full_at_centres == -1)
    dy = ((small // W) - (full_at_centres // W)).abs()
    dx = ((small % W) - (full_at_centres % W)).abs()
    assert (close | ((dy <= 1) & (dx <= 1))).all()


def test_flip_and_identity_warps_are_exact():
    x = torch.randn(2, 3, 8, 12)
    lab = torch.randint(0, 5, (2, 8, 12))
    flip = torch.tensor([[[-1.0, 0, 0], [0, 1, 0]]]).repeat(2, 1, 1)
    ident = torch.tensor([[[1.0, 0, 0], [0, 1, 0]]]).repeat(2, 1, 1)
    torch.testing.assert_close(warp_images(x, flip), x.flip(-1))
    assert torch.equal(warp_labels(lab, flip), lab.flip(-1))
    torch.testing.assert_close(warp_images(x, ident), x)
    assert torch.equal(warp_labels(lab, ident), lab)
    g = torch.Generator().manual_seed(0)
    theta = random_affine(64, g, "cpu", flip_p=0.5, max_rotate=0.0, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert set(theta[:, 0, 0].tolist()) == {-1.0, 1.0}


def test_crop_theta_samples_the_crop():
    p = torch.randn(2, 3, 8, 8)
    boxes = torch.tensor([[0.25, 0.5, 0.75, 1.0], [0.0, 0.0, 0.5, 0.5]])
    flip = torch.tensor([False, True])
    theta = crop_theta(boxes, flip, 2, "cpu")
    grid = F.affine_grid(theta, [2, 1, 4, 4], align_corners=False)
    out = F.grid_sample(p, grid, mode="bilinear", padding_mode="border", align_corners=False)
    torch.testing.assert_close(out[0], p[0, :, 2:6, 4:8])
    torch.testing.assert_close(out[1], p[1, :, 0:4, 0:4].flip(-1))


def test_box_masks_at_two_resolutions():
    boxes = torch.tensor([[0.25, 0.5, 0.75, 1.0], [0.0, 0.0, 0.0, 0.0]])
    m = box_masks(boxes, (8, 8))
    assert m[0].sum() == 16 and m[0, 2:6, 4:8].all() and not m[1].any()
    assert torch.equal(box_masks(boxes, (4, 4)), m[:, 1::2, 1::2])


# ------------------------------------------------------------------------- SL / consistency
def test_self_labeling_loss_closed_form():
    g = torch.Generator().manual_seed(7)
    head = SelfLabelingHead(3, 5, init=torch.randn(3, 5, generator=g))
    u = F.normalize(torch.randn(10, 5, generator=g), dim=1)
    o = F.normalize(torch.randn(10, 3, generator=g), dim=1)
    bank_u, bank_o = MemoryBank(8, 5), MemoryBank(8, 3)
    bank_u.push(F.normalize(torch.randn(6, 5, generator=g), dim=1))
    bank_o.push(F.normalize(torch.randn(6, 3, generator=g), dim=1))
    r = torch.tensor([0.5, 0.3, 0.2])
    loss, marg = self_labeling_loss(u, o, head, r, 0.08, 0.05, 3, bank_u, bank_o)
    c = F.normalize(head.prototypes.detach().double(), dim=1)
    q1 = sinkhorn_balanced(torch.cat([bank_u.valid().double(), u.double()]) @ c.t(), r, 0.05, 3)[-10:]
    q2 = sinkhorn_balanced(torch.cat([bank_o.valid().double(), o.double()]), r, 0.05, 3)[-10:]
    logp = torch.log_softmax(u.double() @ c.t() / 0.08, 1)
    ref = -((q1 + q2) * logp).sum(1).mean()
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(marg.double(), q1.mean(0), rtol=1e-5, atol=1e-6)
    loss.backward()
    assert head.prototypes.grad is not None and head.prototypes.grad.abs().sum() > 0


def test_prototype_consistency_closed_form():
    g = torch.Generator().manual_seed(8)
    t = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64)
    s = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    valid = torch.rand(2, 3, 3, generator=g) > 0.3
    loss = prototype_consistency(t, s, valid)
    kl = F.kl_div(torch.log_softmax(s, 1), torch.log_softmax(t, 1), log_target=True, reduction="none").sum(1)
    ref = kl[valid].mean() / 4
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-5, atol=1e-7)
    assert prototype_consistency(t, t, valid).abs().item() < 1e-6


def test_distill_losses():
    g = torch.Generator().manual_seed(9)
    teacher = torch.randn(2, 3, 4, 4, generator=g) * 4
    student = torch.randn(2, 3, 4, 4, generator=g, requires_grad=True)
    out = distill_losses(student, teacher, threshold=0.9)
    t = torch.softmax(teacher.double(), 1)
    conf, lab = t.max(1)
    ls = torch.log_softmax(student.double(), 1)
    mask = conf >= 0.9
    assert 0 < mask.sum() < mask.numel()
    ce_ref = -ls.gather(1, lab[:, None]).squeeze(1)[mask].mean()
    kl_ref = (t * (t.log() - ls)).sum(1).mean()
    torch.testing.assert_close(out.ce.double(), ce_ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.kl.double(), kl_ref.detach(), rtol=1e-5, atol=1e-6)
    assert distill_losses(teacher, teacher).kl.abs().item() < 1e-6
    out.total.backward()
    assert torch.isfinite(student.grad).all()
    model = make_model().eval()
    x = torch.randn(1, 3, 16, 16)
    la = flip_averaged_logits(model, x)
    pa = (torch.softmax(model(x).logits, 1) + torch.softmax(model(x.flip(-1)).logits, 1).flip(-1)) / 2
    torch.testing.assert_close(torch.softmax(la, 1), pa, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------- preparation
def _manual_prepare(model, ds, stride):
    model.eval()
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    sums, counts, pix = 0, 0, 0
    with torch.no_grad():
        for i in range(len(ds)):
            x = (torch.from_numpy(ds.load(i)[0]).permute(2, 0, 1)[None].float() - mean) / std
            out = model(x)
            f = F.normalize(out.features.double(), dim=1)[0].flatten(1).t()
            y = out.logits[0].argmax(0).flatten()
            oh = F.one_hot(y, K).double()
            sums = sums + oh.t() @ f
            counts = counts + oh.sum(0)
            p0 = torch.softmax(
                F.interpolate(out.logits, size=(32 // stride, 32 // stride), mode="bilinear", align_corners=False), 1
            )
            pix = pix + torch.bincount(p0[0].argmax(0).flatten(), minlength=K)
    return F.normalize(sums / counts.clamp_min(1)[:, None], dim=1), pix.double() / pix.sum()


def test_prepare_writes_resumes_and_loads(tmp_path):
    ds = FakeTarget()
    model = make_model(1)
    m = prepare_cpsl(model, ds, tmp_path, MEAN, STD, "cpu", pseudo_stride=4, progress=False, batch_size=2)
    assert model.calls == 3  # 5 images in batches of 2
    assert (tmp_path / "manifest.json").is_file() and (tmp_path / "prototypes.npy").is_file()
    assert all(p0_path(tmp_path, i).is_file() for i in range(5))
    assert m["count"] == 5 and m["num_classes"] == K and m["pseudo_stride"] == 4 and m["p0_shape"] == [8, 8]
    prep = load_prepared(tmp_path)
    assert prep["p0"].shape == (5, K, 8, 8) and prep["p0"].dtype == np.float16
    np.testing.assert_allclose(prep["p0"].astype(np.float32).sum(1), 1.0, atol=5e-3)
    protos_ref, prior_ref = _manual_prepare(model, ds, 4)
    present = torch.tensor(m["feature_counts"]) > 0
    np.testing.assert_allclose(prep["prototypes"][present.numpy()], protos_ref[present].numpy(), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(prep["prototypes"], axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(prep["prior"], prior_ref.numpy(), atol=1e-12)
    check_prepared_dataset(prep, ds)
    with pytest.raises(PreparedError, match="prepare it again"):
        check_prepared_dataset(prep, FakeTarget(n=4))

    # resume: nothing recomputed when complete; one image recomputed when its file is gone
    model.calls = 0
    prepare_cpsl(model, ds, tmp_path, MEAN, STD, "cpu", pseudo_stride=4, progress=False)
    assert model.calls == 0
    p0_path(tmp_path, 2).unlink()
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(PreparedError, match="manifest.json"):
        load_prepared(tmp_path)
    m2 = prepare_cpsl(model, ds, tmp_path, MEAN, STD, "cpu", pseudo_stride=4, progress=False)
    assert model.calls == 1
    assert m2["prior"] == pytest.approx(m["prior"], abs=1e-12)
    np.testing.assert_array_equal(load_prepared(tmp_path)["p0"], prep["p0"])
    with pytest.raises(PreparedError, match="other parameters"):
        prepare_cpsl(model, ds, tmp_path, MEAN, STD, "cpu", pseudo_stride=2, progress=False)
    p0_path(tmp_path, 4).unlink()
    with pytest.raises(PreparedError, match="missing"):
        load_prepared(tmp_path)


def test_prepare_from_checkpoint(tmp_path):
    from PIL import Image

    from balda.config import Config, DatasetConfig, ModelConfig, to_dict
    from balda.models import build_model

    root = tmp_path / "cs"
    city = root / "leftImg8bit" / "train" / "aachen"
    city.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        img = rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)
        Image.fromarray(img).save(city / f"aachen_{i:06d}_000019_leftImg8bit.png")
    cfg = Config()
    cfg.model = ModelConfig(name="small", width=4, num_classes=5)
    cfg.data.target = DatasetConfig(kind="cityscapes", root=str(root), split="train", labelled=False)
    torch.manual_seed(0)
    warm = build_model(cfg.model)
    torch.save({"model": warm.state_dict(), "config": to_dict(cfg)}, tmp_path / "final.pt")
    out = tmp_path / "prep"
    m = prepare_from_checkpoint(tmp_path, out, overrides=["method.cpsl.pseudo_stride=8"], device="cpu", progress=False)
    assert m["pseudo_stride"] == 8 and m["count"] == 3 and m["p0_shape"] == [4, 8]
    assert m["checkpoint"].endswith("final.pt") and (out / "model.pt").is_file()
    # the strategy starts the student (and its teacher) from the warm-up weights
    torch.manual_seed(1)
    student = build_model(cfg.model)
    ccfg = replace(cfg.method.cpsl, prepared=str(out), pseudo_stride=8, bank_size=16)
    strat = CPSLStrategy(student, None, ccfg, 5, MEAN, STD)
    for (n, a), b in zip(student.state_dict().items(), warm.state_dict().values()):
        assert torch.equal(a, b), n
    assert strat.store.shape == (3, 5, 4, 8)


# ------------------------------------------------------------------------------------ strategy
def test_strategy_requires_prepared(tmp_path):
    cfg = CPSLConfig(prepared=None)
    with pytest.raises(ValueError, match=r"method\.cpsl\.prepared"):
        CPSLStrategy(make_model(), None, cfg, K, MEAN, STD)
    with pytest.raises(ValueError, match=r"method\.cpsl\.prepared.*not found"):
        CPSLStrategy(make_model(), None, replace(cfg, prepared=str(tmp_path / "nope")), K, MEAN, STD)
    with pytest.raises(ValueError, match=r"method\.cpsl\.prepared.*manifest\.json"):
        CPSLStrategy(make_model(), None, replace(cfg, prepared=str(tmp_path)), K, MEAN, STD)


def test_soft_labels_follow_crop_and_flip(prepared_dir):
    strat = make_strategy(prepared_dir, make_model())
    idx = torch.tensor([3, 0])
    full = strat.store.lookup(idx)  # (2, K, 8, 8)
    boxes = torch.tensor([[0.25, 0.5, 0.75, 1.0], [0.0, 0.0, 1.0, 1.0]])
    out = strat.soft_labels(idx, (4, 4), boxes, torch.tensor([False, True]))
    torch.testing.assert_close(out[0], full[0, :, 2:6, 4:8])
    torch.testing.assert_close(
        out[1],
        F.interpolate(full[1:], size=(4, 4), mode="bilinear", align_corners=False)[0].flip(-1),
        atol=1e-6,
        rtol=1e-6,
    )


def test_sl_gradient_reaches_only_prototypes(prepared_dir):
    model = make_model()
    model.train()
    strat = make_strategy(prepared_dir, model)
    out = strat.compute_losses(model, make_batch(), step=0)
    params = list(model.parameters())
    grads = torch.autograd.grad(
        out.losses["target.sl"], params + [strat.head.prototypes], allow_unused=True, retain_graph=True
    )
    assert all(gr is None or gr.abs().sum() == 0 for gr in grads[:-1])
    assert grads[-1] is not None and grads[-1].abs().sum() > 0
    # consistency and pseudo-label terms train the network, not the prototypes
    for name in ("target.con", "target.ce", "target.rce"):
        gr = torch.autograd.grad(
            out.losses[name], params + [strat.head.prototypes], allow_unused=True, retain_graph=True
        )
        assert gr[-1] is None
        assert any(x is not None and x.abs().sum() > 0 for x in gr[:-1]), name


def test_full_step_and_after_step(prepared_dir):
    model = make_model()
    model.train()
    strat = make_strategy(prepared_dir, model)
    strat.train()
    assert not strat.teacher.training
    trainable = [n for n, p in strat.named_parameters() if p.requires_grad]
    assert trainable == ["head.prototypes"]
    batch = make_batch()
    out = strat.compute_losses(model, batch, step=5)
    assert set(out.losses) == {"source.ce", "target.ce", "target.rce", "target.sl", "target.con"}
    assert out.task == ("source.ce",)
    assert out.weights == {"target.ce": 0.1, "target.rce": 1.0, "target.sl": 0.1, "target.con": 5.0}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in out.losses.values())
    assert out.logs["cpsl/assign_marginal"].shape == (K,) and out.logs["cpsl/prior"].shape == (K,)
    assert abs(out.logs["cpsl/assign_marginal"].sum().item() - 1) < 1e-4
    assert 0 <= out.logs["cpsl/rectified_changed"].item() <= 1
    assert len(strat.bank_feat) == 32 and len(strat.bank_out) == 32

    opt = torch.optim.SGD(list(model.parameters()) + [p for p in strat.parameters() if p.requires_grad], lr=0.1)
    opt.zero_grad()
    out.total().backward()
    opt.step()
    t_before = [p.clone() for p in strat.teacher.parameters()]
    ema_before = strat.head.prototypes_ema.clone()
    strat.after_step(model, 5)
    a = 0.999
    for tb, tp, sp in zip(t_before, strat.teacher.parameters(), model.parameters()):
        torch.testing.assert_close(tp, a * tb + (1 - a) * sp.detach())
    torch.testing.assert_close(strat.head.prototypes_ema, a * ema_before + (1 - a) * strat.head.prototypes.detach())
    assert not torch.equal(strat.head.prototypes_ema, ema_before)

    # second step uses the bank and wraps it (48 = 1.5 steps); state dict round trip
    out2 = strat.compute_losses(model, batch, step=6)
    assert all(torch.isfinite(v) for v in out2.losses.values())
    assert len(strat.bank_feat) == 48 and strat.bank_feat.ptr == 16
    other = make_strategy(prepared_dir, make_model())
    other.load_state_dict(strat.state_dict())
    assert other.bank_feat.ptr == 16 and torch.equal(other.bank_feat.data, strat.bank_feat.data)
    assert torch.equal(other.head.prototypes, strat.head.prototypes)


def test_step_is_deterministic(prepared_dir):
    outs = []
    for _ in range(2):
        model = make_model()
        strat = make_strategy(prepared_dir, model, cutmix_p=1.0, threshold=0.3)
        outs.append(strat.compute_losses(model, make_batch(), step=2))
    for k in outs[0].losses:
        assert torch.equal(outs[0].losses[k], outs[1].losses[k]), k
    assert outs[0].logs["cpsl/cutmix_ratio"] > 0
