"""CPSL stage 1: class-balanced pixel-level self-labeling.

Stage 1 of Li et al., "Class-Balanced Pixel-Level Self-Labeling for Domain Adaptive Semantic
Segmentation", CVPR 2022 (CPSL). Self-training on fixed soft pseudo-labels ``p0`` of a warm-up
model (prepared offline, :mod:`balda.methods.cpsl.prepare`), *rectified* by an online clustering of
target pixels onto ``K`` learnable class prototypes; the clustering is made class-balanced by
optimal transport whose class marginal is the prior ``r`` of the pseudo-labels.

Notation: ``f`` decoder features, ``f^ = f/||f||``; ``C`` (K, D) prototypes, ``c^_k = c_k/||c_k||``;
primes denote the EMA teacher network / EMA prototypes; ``tau`` = ``cfg.tau`` (0.08).

Per step (:meth:`CPSLStrategy.compute_losses`), source batch ``(x_s, y_s)``, target batch ``x_t``:

1. ``'source.ce'`` (task group): ``CE(f(x_s), y_s)`` with the ``'source'`` class weighting.
2. Teacher on the weak (un-augmented) target view: ``f'``, logits ``o``. Rectified pseudo-label
   ``y^_i = argmax_k softmax_k(<f^'_i, c^'_k>/tau) * p0_ik`` (:func:`rectify`), at the label
   (= image) resolution: the teacher score map is upsampled bilinearly, ``p0`` of the crop is
   sampled from the stored map (:meth:`CPSLStrategy.soft_labels`). Optional confidence threshold
   on the normalised product (``cfg.threshold``, 0 = off).
3. Strong view: random affine warp ``T`` (resized crop, flip, small rotation; :func:`random_affine`)
   of ``x_t``, labels ``T(y^)`` (nearest), optional CutMix of a source box (probability
   ``cutmix_p`` per image, source labels pasted), colour jitter and blur.
   ``'target.ce'`` (trade-off ``lambda_ce``, ``'target'`` weighting) and ``'target.rce'``
   (``lambda_rce``, :func:`rce_loss`) on the student prediction of the strong view.
4. ``'target.sl'`` (``lambda_sl``; trains the prototypes only): ``n = samples_per_image`` random
   teacher feature pixels per image, ``u = f^'`` (detached). With the memory bank ``M_u`` (FIFO of
   past ``u``, re-scored with the current prototypes) ``Q_1 = Sinkhorn([M_u; u] C^^T, r)`` and, from
   the L2-normalised teacher logits ``o^`` with their bank ``M_o``, ``Q_2 = Sinkhorn([M_o; o^], r)``
   (:func:`sinkhorn_balanced`); rows of the current samples only:
   ``L_SL = -(1/n) sum_i sum_k (q1_ik + q2_ik) log softmax_k(<u_i, c^_k>/tau)`` (the two targets are
   summed, as the released code does). Then ``u``, ``o^`` enter the banks.
5. ``'target.con'`` (``lambda_con``; ProDA's prototype consistency, Zhang et al. CVPR 2021):
   ``(1/K) mean_j KL(softmax(T(<f^'_w, c^'>)/tau)_j || softmax(<f^_s, c^'>/tau)_j)`` over the
   strong-view positions ``j`` that the warp covers and CutMix did not replace; teacher scores on the
   weak view warped (bilinear) to the strong view's geometry, student scores from the strong view.
   The EMA prototypes are used on both sides (as the released code), so this term trains the network.

Total (trainer): ``L_src + lambda_ce L_ce + lambda_rce L_rce + lambda_sl L_SL + lambda_con L_con``.
After the step (:meth:`CPSLStrategy.after_step`): ``theta' <- a theta' + (1-a) theta`` with the fixed
``a = ema_alpha`` (the teacher starts equal to the warm-up student) and ``C' <- b C' + (1-b) C``,
``b = proto_ema``.

Class-balanced Sinkhorn-Knopp (SwAV, Caron et al. NeurIPS 2020, with the row marginal ``r`` instead
of the uniform ``1/K``): ``Q = exp(S^T/eps)`` (K x N), ``Q /= sum Q``; ``n_iter`` times: rows scaled
to ``r_k``, columns to ``1/N``; return ``N Q^T``. RCE is the reverse cross-entropy of symmetric
cross-entropy (Wang et al., ICCV 2019): ``RCE_i = -log(1e-4) (1 - p_{i,y_i})``.

Deviations, documented: the prototype score map is upsampled (K channels) instead of the
2048-channel features; the teacher runs in eval mode with BatchNorm statistics EMA-updated
(:func:`~balda.methods.teachers.ema_update`); the strong view uses an affine warp + colour
jitter/blur instead of RandAugment; CutMix is drawn per image; the memory banks are used as soon as
they hold samples (the released code waits until they are full).

Batch contract beyond :mod:`balda.methods.base`: ``batch['target']['index']`` addresses the stored
``p0``. If the target images are random crops / flips of the prepared (resized) images the loader
must add ``batch['target']['crop_box']`` (B,4) float ``(y0, x0, y1, x1)`` as fractions in [0, 1] of
the full resized image, and ``batch['target']['flip']`` (B,) bool (flip applied after the crop).
Without them ``p0`` is taken to cover the whole target image, unflipped.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from balda.core.registry import RUN_PLOTS
from balda.data.labels import IGNORE_INDEX
from balda.methods.augment import (
    affine_grid,
    batch_rand,
    box_masks,
    color_jitter,
    crop_theta,
    gaussian_blur,
    mix,
    random_affine,
    random_boxes,
    step_generator,
    warp_images,
    warp_labels,
    warp_maps,
)
from balda.methods.base import StepOutput, Strategy, WeightingFactory, register_strategy, unwrap
from balda.methods.cpsl.clustering import MemoryBank, SelfLabelingHead, prototype_consistency, self_labeling_loss
from balda.methods.losses import masked_mean, resize_logits
from balda.methods.teachers import TeacherMixin, ema_update, frozen_copy
from balda.models.base import Segmentor

log = logging.getLogger("balda.cpsl")

__all__ = ["CPSLConfig", "CPSLStrategy", "SoftLabelStore", "rectify", "rce_loss", "RCE_A"]

#: -log(1e-4): the RCE constant (log of the clamped zero entries of the one-hot label).
RCE_A = -math.log(1e-4)


@dataclass
class CPSLConfig:
    """Class-balanced pixel-level self-labeling (docs/cpsl.md)."""

    #: Folder written by ``balda cpsl prepare`` (soft pseudo-labels, prior, prototypes).
    prepared: Optional[str] = None
    tau: float = 0.08
    epsilon: float = 0.05
    sinkhorn_iters: int = 3
    bank_size: int = 65536
    samples_per_image: int = 256
    ema_alpha: float = 0.999
    proto_ema: float = 0.999
    threshold: float = 0.0
    lambda_ce: float = 0.1
    lambda_rce: float = 1.0
    lambda_con: float = 5.0
    lambda_sl: float = 0.1
    cutmix_p: float = 0.5
    #: Downsampling factor of the stored soft pseudo-labels.
    pseudo_stride: int = 4


# ------------------------------------------------------------------------------ rectification/RCE
def rectify(
    proto_probs: torch.Tensor, p0: torch.Tensor, threshold: float = 0.0, ignore: int = IGNORE_INDEX
) -> torch.Tensor:
    """Rectified pseudo-label ``y^ = argmax_k proto_probs_k * p0_k`` over dim 1 (CPSL Eq. 4).

    With ``threshold > 0`` pixels whose normalised product ``max_k (a_k p0_k) / sum_k a_k p0_k`` is
    below it are set to ``ignore``. Inputs (B, K, H, W) of the same size; returns (B, H, W) long.
    """
    prod = proto_probs.float() * p0.float()
    labels = prod.argmax(dim=1)
    if threshold > 0:
        conf = prod.max(dim=1).values / prod.sum(dim=1).clamp_min(1e-30)
        labels = torch.where(conf >= threshold, labels, torch.full_like(labels, ignore))
    return labels


def rce_loss(logits: torch.Tensor, labels: torch.Tensor, ignore: int = IGNORE_INDEX) -> torch.Tensor:
    """Reverse cross-entropy (symmetric CE, Wang et al. 2019): ``-log(1e-4) (1 - p_{i,y_i})``
    averaged over the non-ignored pixels; logits upsampled (bilinear) to the label size. 0 (with a
    graph) when no pixel is labelled."""
    logits = resize_logits(logits, labels.shape[-2:])
    prob = torch.softmax(logits.float(), dim=1)
    valid = labels != ignore
    y = torch.where(valid, labels, torch.zeros_like(labels)).long()
    p_y = prob.gather(1, y[:, None]).squeeze(1)
    rce = RCE_A * (1.0 - p_y) * valid
    return masked_mean(rce.sum(), valid.sum())


# ---------------------------------------------------------------------------------- soft labels
class SoftLabelStore(nn.Module):
    """The stored soft pseudo-labels ``p0`` (N, K, h, w) float16, looked up by dataset index.

    ``on_device=True``: a non-persistent buffer (moves with the strategy; lookup without host sync).
    ``on_device=False``: kept in host memory; a lookup copies the (B,) indices to the host.
    """

    def __init__(self, p0, on_device: bool = True):
        super().__init__()
        t = torch.as_tensor(p0)
        if t.dim() != 4:
            raise ValueError(f"SoftLabelStore: expected (N, K, h, w) soft labels, got shape {tuple(t.shape)}")
        t = t.to(torch.float16)
        self.on_device = bool(on_device)
        if self.on_device:
            self.register_buffer("p0", t, persistent=False)
            self._host = None
        else:
            self.p0 = None
            self._host = t

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple((self.p0 if self.on_device else self._host).shape)

    def lookup(self, index: torch.Tensor) -> torch.Tensor:
        """(B, K, h, w) float32 soft labels of the items ``index`` on ``index.device``."""
        if self.on_device:
            return self.p0.index_select(0, index.to(self.p0.device).long()).float()
        sel = self._host.index_select(0, index.detach().to("cpu").long())
        return sel.to(index.device, non_blocking=True).float()


# ----------------------------------------------------------------------------------- strategy
def _validate(cfg: CPSLConfig) -> None:
    checks = [
        ("tau", cfg.tau > 0),
        ("epsilon", cfg.epsilon > 0),
        ("sinkhorn_iters", cfg.sinkhorn_iters >= 1),
        ("bank_size", cfg.bank_size >= 0),
        ("samples_per_image", cfg.samples_per_image >= 1),
        ("ema_alpha", 0 <= cfg.ema_alpha < 1),
        ("proto_ema", 0 <= cfg.proto_ema < 1),
        ("threshold", 0 <= cfg.threshold <= 1),
        ("cutmix_p", 0 <= cfg.cutmix_p <= 1),
        ("pseudo_stride", cfg.pseudo_stride >= 1),
    ]
    bad = [k for k, ok in checks if not ok]
    if bad:
        raise ValueError("method.cpsl: invalid value(s) " + ", ".join(f"{k}={getattr(cfg, k)!r}" for k in bad))


@register_strategy("cpsl", config=CPSLConfig, description="class-balanced pixel-level self-labeling (stage 1)")
class CPSLStrategy(TeacherMixin, Strategy):
    """CPSL stage 1 (see module docstring).

    ``CPSLStrategy(model, weighting, cfg, num_classes, mean, std, seed=0, prepared=None,
    init_from_prepared=True, p0_on_device=None)``

    * ``cfg.prepared``: the folder of ``balda cpsl prepare`` (read with
      :func:`~balda.methods.cpsl.prepare.load_prepared` unless ``prepared``, its result, is given);
      a missing or invalid folder raises ``ValueError`` naming ``method.cpsl.prepared``.
    * ``init_from_prepared``: if the folder holds the warm-up weights (``model.pt``), they are loaded
      into ``model`` here (before the teacher copy), so stage 1 starts from the warm-up model.
    * ``p0_on_device``: keep ``p0`` on the training device (default when it is <= 4 GiB).
    * Submodules: ``teacher`` (EMA network, no grad, eval mode), ``head`` (prototypes: the only
      trainable parameters of the strategy; EMA copy as a buffer), ``bank_feat``/``bank_out``
      (memory banks), ``store`` (p0, not checkpointed), weighting modules.
    """

    #: Strong-view photometric augmentation (DACS values): jitter strength, probability; blur prob.
    jitter_strength: float = 0.2
    jitter_p: float = 0.8
    blur_p: float = 0.5

    def __init__(
        self,
        model: Segmentor,
        weighting: Optional[WeightingFactory],
        cfg: CPSLConfig,
        num_classes: int,
        mean,
        std,
        seed: int = 0,
        prepared: Optional[dict] = None,
        init_from_prepared: bool = True,
        p0_on_device: Optional[bool] = None,
    ):
        super().__init__(model, weighting)
        _validate(cfg)
        self.cfg = cfg
        self.num_classes = K = int(num_classes)
        self.seed = int(seed)
        if prepared is None:
            prepared = self._load(cfg)
        net = unwrap(model)
        self._check_prepared(prepared, K, int(getattr(net, "feature_channels", prepared["prototypes"].shape[1])), cfg)
        mw = prepared.get("model_weights")
        if init_from_prepared and mw is not None:
            from balda.core.checkpoint import load_checkpoint, load_model_weights

            state = load_checkpoint(mw)["model"]
            try:
                load_model_weights(net, state, mw)
            except Exception as e:  # noqa: BLE001
                raise ValueError(f"method.cpsl.prepared: the warm-up weights {mw} do not fit the model: {e}") from None
            log.info("CPSL: student initialised from the warm-up weights %s", mw)
        self.register_normalization(mean, std)
        self.teacher = frozen_copy(net)
        protos = torch.as_tensor(np.asarray(prepared["prototypes"], dtype=np.float32))
        D = protos.shape[1]
        self.head = SelfLabelingHead(K, D, init=protos)
        self.bank_feat = MemoryBank(cfg.bank_size, D)
        self.bank_out = MemoryBank(cfg.bank_size, K)
        self.register_buffer(
            "prior", torch.as_tensor(np.asarray(prepared["prior"], dtype=np.float64)).float(), persistent=False
        )
        p0 = prepared["p0"]
        if p0_on_device is None:
            p0_on_device = int(np.prod(p0.shape)) * 2 <= (4 << 30)
        self.store = SoftLabelStore(p0, on_device=p0_on_device)
        self.source_ce = self.make_ce("source")
        self.target_ce = self.make_ce("target")

    @classmethod
    def from_config(cls, cfg, model, weighting=None):
        return cls(
            model, weighting, cfg.method.cpsl, cfg.model.num_classes, cfg.data.mean, cfg.data.std, seed=cfg.train.seed
        )

    def optimized_with_model(self) -> list[nn.Parameter]:
        """The class prototypes (the self-labeling head) train with the segmentor's optimiser."""
        return [self.head.prototypes]

    # ------------------------------------------------------------------------------- preparation
    @staticmethod
    def _load(cfg: CPSLConfig) -> dict:
        from balda.methods.cpsl.prepare import PreparedError, load_prepared

        if not cfg.prepared:
            raise ValueError(
                "method.cpsl.prepared is not set: CPSL needs the folder of soft pseudo-labels, class "
                "prior and prototypes written by `balda cpsl prepare RUN_OR_CKPT` with the warm-up "
                "model; set method.cpsl.prepared=<that folder>"
            )
        try:
            return load_prepared(cfg.prepared)
        except PreparedError as e:
            raise ValueError(f"method.cpsl.prepared={cfg.prepared!r} is not usable: {e}") from None

    @staticmethod
    def _check_prepared(prepared: dict, K: int, D: int, cfg: CPSLConfig) -> None:
        where = f"method.cpsl.prepared={prepared.get('dir', cfg.prepared)!s}"
        p0, protos, prior = prepared.get("p0"), prepared.get("prototypes"), prepared.get("prior")
        if p0 is None or protos is None or prior is None:
            raise ValueError(f"{where}: the prepared data lacks p0, prototypes or prior")
        if int(prepared.get("num_classes", K)) != K or p0.shape[1] != K or np.asarray(prior).shape != (K,):
            raise ValueError(f"{where}: prepared for {p0.shape[1]} classes, the model has {K}")
        if protos.shape != (K, D):
            raise ValueError(
                f"{where}: prototypes of shape {tuple(protos.shape)}, the model's decoder features "
                f"have {D} channels (expected ({K}, {D})); was it prepared with another model?"
            )
        if int(prepared.get("pseudo_stride", cfg.pseudo_stride)) != cfg.pseudo_stride:
            log.warning(
                "%s: stored at stride %s, method.cpsl.pseudo_stride=%s (the stored maps are used)",
                where,
                prepared.get("pseudo_stride"),
                cfg.pseudo_stride,
            )

    # ------------------------------------------------------------------------------------- modes
    def eval_model(self, model: Segmentor) -> nn.Module:
        """The student (as the released code evaluates); the EMA model is :attr:`teacher`."""
        return model

    # ------------------------------------------------------------------------------------ pieces
    def soft_labels(
        self,
        index: torch.Tensor,
        size: tuple[int, int],
        crop_box: Optional[torch.Tensor] = None,
        flip: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """``p0`` of the batch items at ``size`` (B, K, H, W): the stored map of item ``index[b]``
        sampled bilinearly (align_corners=False, border padding) over its crop, flipped if ``flip``."""
        p = self.store.lookup(index)
        theta = crop_theta(crop_box, flip, p.shape[0], p.device)
        grid = affine_grid(theta, size, p.dtype)
        return F.grid_sample(p, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _sample(self, feats_n: torch.Tensor, logits: torch.Tensor, g: torch.Generator):
        """``n`` random positions per image (without replacement): normalised features (B*n, D)
        and L2-normalised logits (B*n, K)."""
        B, D, h, w = feats_n.shape
        K = logits.shape[1]
        n = min(int(self.cfg.samples_per_image), h * w)
        keys = batch_rand(B, h * w, g, feats_n.device)
        sel = keys.topk(n, dim=1).indices  # (B, n)
        u = feats_n.flatten(2).gather(2, sel[:, None].expand(B, D, n)).transpose(1, 2).reshape(-1, D)
        o = logits.flatten(2).gather(2, sel[:, None].expand(B, K, n)).transpose(1, 2).reshape(-1, K)
        return u, F.normalize(o, dim=1)

    # ---------------------------------------------------------------------------------- losses
    def compute_losses(self, model: Segmentor, batch: dict, step: int) -> StepOutput:
        cfg = self.cfg
        src, tgt = batch["source"], batch["target"]
        xs, ys, xt, idx = src["image"], src["label"], tgt["image"], tgt["index"]
        B, _, H, W = xt.shape
        if cfg.cutmix_p > 0 and (xs.shape[-2:] != xt.shape[-2:] or ys.shape[-2:] != xs.shape[-2:]):
            raise ValueError(
                "CPSL CutMix pastes source pixels into the target crop: source image "
                f"{tuple(xs.shape[-2:])}, source label {tuple(ys.shape[-2:])} and target image "
                f"{tuple(xt.shape[-2:])} must have the same size (or set method.cpsl.cutmix_p=0)"
            )
        dev = xt.device
        tau = float(cfg.tau)
        losses: dict[str, torch.Tensor] = {}
        logs: dict[str, torch.Tensor] = {}
        weights = {
            "target.ce": cfg.lambda_ce,
            "target.rce": cfg.lambda_rce,
            "target.sl": cfg.lambda_sl,
            "target.con": cfg.lambda_con,
        }

        # 1. source CE
        out_s = model(xs)
        losses["source.ce"], ce_logs = self.source_ce(out_s.logits, ys)
        logs.update(ce_logs)

        g = step_generator(self.seed, step, dev)

        def no_amp():
            return torch.autocast(dev.type, enabled=False)

        # 2. teacher on the weak view, rectified pseudo-labels
        with torch.no_grad():
            t_out = self.teacher(xt)
            with no_amp():
                f_t = F.normalize(t_out.features.float(), dim=1)
                o_t = t_out.logits.float()
                s_teacher = self.head.score_map(f_t, ema=True) / tau  # (B,K,h,w)
                proto_prob = torch.softmax(resize_logits(s_teacher, (H, W)), dim=1)
                p0 = self.soft_labels(idx, (H, W), tgt.get("crop_box"), tgt.get("flip"))
                y_hat = rectify(proto_prob, p0, cfg.threshold)
                valid_hat = y_hat != IGNORE_INDEX
                changed = ((y_hat != p0.argmax(dim=1)) & valid_hat).float().sum() / valid_hat.float().sum().clamp_min(1)

            # 3. strong view: warp, CutMix, photometric
            theta = random_affine(B, g, dev, aspect=W / H)
            x_strong = warp_images(xt, theta)
            y_strong = warp_labels(y_hat, theta)
            boxes = None
            if cfg.cutmix_p > 0:
                boxes = random_boxes(B, g, dev, cfg.cutmix_p)
                Bs = xs.shape[0]
                pair = torch.arange(B, device=dev) % Bs
                xs_p, ys_p = (xs, ys) if Bs == B else (xs.index_select(0, pair), ys.index_select(0, pair))
                m_img = box_masks(boxes, (H, W))
                x_strong = mix(m_img, xs_p, x_strong)
                y_strong = torch.where(m_img, ys_p.long(), y_strong)
                logs["cpsl/cutmix_ratio"] = m_img.float().mean()
            x_strong = color_jitter(x_strong, self.jitter_strength, self.jitter_p, g, self.mean, self.std)
            x_strong = gaussian_blur(x_strong, g, p=self.blur_p)

        # student on the strong view: pseudo-label CE + RCE
        out_t = model(x_strong)
        losses["target.ce"], ce_logs = self.target_ce(out_t.logits, y_strong)
        logs.update(ce_logs)
        losses["target.rce"] = rce_loss(out_t.logits, y_strong)

        with no_amp():
            # 4. self-labeling (prototypes only)
            u, o = self._sample(f_t, o_t, g)
            losses["target.sl"], marginal = self_labeling_loss(
                u, o, self.head, self.prior, tau, cfg.epsilon, cfg.sinkhorn_iters, self.bank_feat, self.bank_out
            )
            self.bank_feat.push(u)
            self.bank_out.push(o)

            # 5. prototype consistency (teacher weak -> strong geometry vs student strong)
            f_s = F.normalize(out_t.features.float(), dim=1)
            s_student = self.head.score_map(f_s, ema=True) / tau
            s_warp, valid = warp_maps(s_teacher, theta, size=tuple(s_student.shape[-2:]))
            if boxes is not None:
                valid = valid & ~box_masks(boxes, tuple(s_student.shape[-2:]))
            losses["target.con"] = prototype_consistency(s_warp, s_student, valid)

        logs["cpsl/assign_marginal"] = marginal.detach()
        logs["cpsl/prior"] = self.prior
        logs["cpsl/rectified_changed"] = changed
        logs["cpsl/pseudo_valid"] = valid_hat.float().mean()
        logs["cpsl/con_valid"] = valid.float().mean()
        return StepOutput(losses=losses, weights=weights, task=("source.ce",), logs=logs)

    # -------------------------------------------------------------------------------- post-step
    def after_step(self, model: Segmentor, step: int) -> dict[str, torch.Tensor]:
        """EMA of the network (fixed momentum ``ema_alpha``) and of the prototypes (``proto_ema``)."""
        ema_update(self.teacher, unwrap(model), float(self.cfg.ema_alpha))
        self.head.update_ema(float(self.cfg.proto_ema))
        return {}


# ------------------------------------------------------------------------------------------ run plot
def plot_marginal_vs_prior(out: Path, train: list[dict]) -> list[Path]:
    """``cpsl_marginal_vs_prior.png``: the class marginal of the Sinkhorn assignments over training,
    divided by the prior r it is balanced towards (1 = balanced), from the logged ``cpsl/*`` scalars."""
    from balda import plots
    from balda.data.labels import CLASS_NAMES

    marg = [r for r in train if f"cpsl/assign_marginal/{CLASS_NAMES[0]}" in r]
    if not marg:
        return []
    steps = [r["step"] for r in marg]
    m = np.array([[r.get(f"cpsl/assign_marginal/{c}", np.nan) for c in CLASS_NAMES] for r in marg], dtype=float)
    prior = np.array([marg[-1].get(f"cpsl/prior/{c}", np.nan) for c in CLASS_NAMES], dtype=float)
    ratio = m / np.where(prior > 0, prior, np.nan)
    return [
        plots.plot_class_weights(
            steps,
            ratio,
            CLASS_NAMES,
            Path(out) / "cpsl_marginal_vs_prior.png",
            title="CPSL: assignment class marginal / prior r (1 = balanced)",
            ylabel="marginal / r",
        )
    ]


RUN_PLOTS.add("cpsl_marginal_vs_prior", plot_marginal_vs_prior, replace=True)
