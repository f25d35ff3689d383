"""Mean-teacher self-training with cross-domain ClassMix (DACS / DAFormer), docs/baselines.md.

Per step, with student ``f`` (the trained segmentor) and EMA teacher ``f'``:

1. Source loss ``'source.ce'`` (task group): ``CE(f(x_s), y_s)`` with the ``'source'`` class
   weighting computed from the (detached) source logits at label resolution and ``y_s``.
2. Pseudo-labels from the teacher on the *un-augmented* target image, logits upsampled
   (bilinear) to label resolution: ``p = softmax(f'(x_t))``, ``yhat = argmax_c p``.
   Confidence weight of image ``b``: ``q_b = (1/HW) sum_i [max_c p_ic >= tau]`` (tau =
   ``pseudo_threshold``, 0.968), a scalar broadcast over the image; rows ``< ignore_top`` and
   ``>= H - ignore_bottom`` get weight 0 (DAFormer: 15 / 120 on 512 crops).
3. ClassMix per pair (source image ``b mod B_s`` with target image ``b``): ``M`` = pixels of half of
   the classes present in that source label (:func:`~balda.methods.augment.classmix_masks`);
   ``x_m = M x_s + (1-M) x_t``, ``y_m = M y_s + (1-M) yhat``, pixel weight ``m = M + (1-M) q``.
   Then colour jitter and Gaussian blur on ``x_m`` (DACS "strong" augmentation).
4. Target loss ``'target.ce'`` (alignment group, trade-off ``lambda_target``):
   ``(1/|V|) sum_i w_{y_m,i} m_i CE_i(f(x_m), y_m)`` with ``w`` the ``'target'`` class weighting
   computed from the mixed logits (label resolution) and the mixed hard labels ``y_m``.
5. Optional ImageNet feature distance ``'source.fdist'`` (task group, trade-off ``fdist_lambda``,
   DAFormer): on the last (bottleneck) backbone feature map, ``FD = mean_{j in T} ||F(x_s)_j -
   F_IN(x_s)_j||_2`` over the feature positions ``j`` whose downscaled source label is a thing
   class (``fdist_classes``); a position's label is its cell's majority class if that class covers
   at least ``fdist_scale_min_ratio`` of the cell, else ignored. ``F_IN`` is the frozen ImageNet
   model. Empty ``fdist_classes`` = all positions. No thing position in the batch -> 0.

After the optimiser step (:meth:`after_step`, step ``t`` = the 0-based index of the iteration
just taken) the teacher is updated as ``theta' <- a_t theta' + (1 - a_t) theta`` with
``a_t = min(1 - 1/(t + 1), ema_alpha)``: ``a_0 = 0`` (teacher = student after the first step),
``a_1 = 0.5``, ``a_10 = 10/11``, capped at 0.999. (DAFormer applies the same formula at the start
of iteration ``t`` with the student of iteration ``t-1``; the schedule is the same up to this
one-step index shift.)

Deviations, documented: the teacher runs in eval mode (BatchNorm running statistics, no dropout;
DACS/DAFormer run it in train mode), so its floating-point buffers (BN running statistics) are
EMA-updated with the same ``a_t`` as the weights (integer buffers are copied). The colour jitter
uses DACS/DAFormer's convention for ``color_jitter_p``: their code applies the jitter when
``u > p`` with ``u ~ U(0,1)``, i.e. with probability ``1 - p`` (0.8 at the default ``p = 0.2``);
it is reproduced here (per image).

References: Tranheden et al., "DACS", WACV 2021; Hoyer et al., "DAFormer", CVPR 2022; Tarvainen &
Valpola, "Mean teachers", NeurIPS 2017.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Optional

import torch
from torch import nn

from balda.data.labels import IGNORE_INDEX
from balda.methods.augment import classmix_masks, color_jitter, gaussian_blur, mix, step_generator
from balda.methods.base import StepOutput, Strategy, WeightingFactory, register_strategy, unwrap
from balda.methods.losses import masked_mean, resize_logits
from balda.methods.teachers import TeacherMixin, ema_alpha, ema_update, frozen_copy
from balda.models.base import Segmentor


@dataclass
class SelfTrainingConfig:
    """Mean-teacher self-training with ClassMix (DACS / DAFormer), docs/baselines.md."""

    ema_alpha: float = 0.999
    pseudo_threshold: float = 0.968
    #: Pseudo-label pixel weight: ``image`` = share of confident pixels of the image (DACS);
    #: ``pixel`` = 1 where the teacher's confidence >= pseudo_threshold, else 0 (FixMatch-style).
    pseudo_weight: Literal["image", "pixel"] = "image"
    #: Ignore the top/bottom rows of the pseudo-label (DAFormer: 15 / 120 on 512 crops).
    ignore_top: int = 0
    ignore_bottom: int = 0
    mix: Literal["classmix", "none"] = "classmix"
    color_jitter_strength: float = 0.2
    #: DACS/DAFormer convention (their code jitters when u > p): the mixed image is colour-jittered
    #: with probability ``1 - color_jitter_p`` (0.8 at the default 0.2).
    color_jitter_p: float = 0.2
    blur: bool = True
    lambda_target: float = 1.0
    #: ImageNet feature distance (DAFormer); active when ``imnet_model`` is a weights path.
    fdist_lambda: float = 0.005
    fdist_classes: list[int] = field(default_factory=lambda: [6, 7, 11, 12, 13, 14, 15, 16, 17, 18])
    fdist_scale_min_ratio: float = 0.75
    imnet_model: Optional[str] = None


__all__ = [
    "SelfTrainingStrategy",
    "ema_alpha",
    "ema_update",
    "pseudo_label",
    "mixed_targets",
    "downscale_label_ratio",
    "feature_distance",
]


def pseudo_label(
    logits: torch.Tensor,
    size: tuple[int, int],
    threshold: float,
    ignore_top: int = 0,
    ignore_bottom: int = 0,
    weight: str = "image",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hard pseudo-labels and their pixel weights from teacher logits.

    ``logits`` (B,K,h,w) are upsampled to ``size`` = (H, W). Returns ``labels`` (B,H,W) =
    argmax softmax, ``pixel_weight`` (B,H,W) and ``q`` (B,) = fraction of pixels of each image with
    max probability >= ``threshold``. ``weight="image"`` (DACS): ``pixel_weight`` = ``q_b``
    broadcast; ``weight="pixel"`` (FixMatch-style hard mask, Sohn et al. NeurIPS 2020):
    ``pixel_weight_i = [max_c p_ic >= threshold]``. Ignored rows get weight 0 in both.
    """
    prob = torch.softmax(resize_logits(logits.float(), size), dim=1)
    conf, labels = prob.max(dim=1)
    q = (conf >= threshold).float().mean(dim=(1, 2))
    B, H, W = labels.shape
    rows = torch.arange(H, device=logits.device)
    keep = (rows >= int(ignore_top)) & (rows < H - int(ignore_bottom))
    if weight == "pixel":
        return labels, (conf >= threshold).to(q.dtype) * keep.view(1, H, 1).to(q.dtype), q
    if weight != "image":
        raise ValueError(f"method.self_training.pseudo_weight: unknown {weight!r}; expected 'image' or 'pixel'")
    pixel_weight = q.view(B, 1, 1) * keep.view(1, H, 1).to(q.dtype)
    return labels, pixel_weight.expand(B, H, W), q


def mixed_targets(
    mask: torch.Tensor, source_labels: torch.Tensor, pseudo_labels: torch.Tensor, pseudo_weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """ClassMix targets: ``y_m = M y_s + (1-M) yhat`` and ``m = M * 1 + (1-M) * q`` (DACS)."""
    labels = mix(mask, source_labels.long(), pseudo_labels.long())
    weight = torch.where(mask, torch.ones_like(pseudo_weight), pseudo_weight)
    return labels, weight


def downscale_label_ratio(
    labels: torch.Tensor, size: tuple[int, int], min_ratio: float, num_classes: int, ignore: int = IGNORE_INDEX
) -> torch.Tensor:
    """Downscale (B,H,W) labels to ``size`` = (h, w) by majority vote (DAFormer's FD labels).

    Pixel ``(y, x)`` belongs to cell ``(floor(y h / H), floor(x w / W))`` (exact blocks when the
    sizes divide). Each cell gets the most frequent value among the K classes *and* ``ignore``
    (counted as one extra class); it is set to ``ignore`` when that is the winner or when its share of
    the cell is below ``min_ratio``. Counting is one scatter-add, no one-hot of the full label map.
    """
    B, H, W = labels.shape
    h, w = int(size[0]), int(size[1])
    K = int(num_classes)
    dev = labels.device
    lab = labels.long()
    lab = torch.where((lab >= 0) & (lab < K), lab, torch.full_like(lab, K))
    ry = torch.arange(H, device=dev) * h // H
    rx = torch.arange(W, device=dev) * w // W
    cell = ry[:, None] * w + rx[None, :]
    idx = (lab * (h * w) + cell).reshape(B, -1)
    counts = torch.zeros(B, (K + 1) * h * w, device=dev)
    counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=counts.dtype))
    counts = counts.view(B, K + 1, h, w)
    total = counts.sum(dim=1).clamp_min(1)
    best, cls = counts.max(dim=1)
    ratio = best / total
    bad = (cls == K) | (ratio < min_ratio)
    return torch.where(bad, torch.full_like(cls, ignore), cls)


def feature_distance(feat: torch.Tensor, feat_ref: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean over positions (inside ``mask`` if given) of ``||feat - feat_ref||_2`` over channels;
    0 (with a graph) when the mask is empty."""
    d = torch.linalg.vector_norm(feat.float() - feat_ref.detach().float(), dim=1)
    if mask is None:
        return d.mean()
    m = mask.to(d.dtype)
    return masked_mean((d * m).sum(), m.sum())


def _last_feature(out) -> torch.Tensor:
    """The bottleneck map of a backbone output (last of a list/tuple/dict, or the tensor itself)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        return list(out.values())[-1]
    return out[-1]


@register_strategy(
    "self_training", config=SelfTrainingConfig, description="mean-teacher self-training with ClassMix (DACS / DAFormer)"
)
class SelfTrainingStrategy(TeacherMixin, Strategy):
    """DACS/DAFormer self-training (see module docstring).

    ``SelfTrainingStrategy(model, weighting, cfg, num_classes, mean, std, seed=0, imnet_model=None)``

    * ``teacher``: the EMA teacher (a deep copy of ``model``; no gradients, always in eval mode;
      saved in the strategy's ``state_dict``).
    * ``imnet_model``: frozen ImageNet model for the feature distance (a Segmentor, whose
      ``backbone`` is used, or a backbone module). Held outside the module tree, so it is neither
      checkpointed (it is reloaded from its weights file) nor counted as trainable; it is moved to
      the batch's device on first use.
    * :meth:`eval_model` returns the *student* (as DAFormer evaluates); use ``teacher`` to evaluate
      the EMA model instead.
    """

    def __init__(
        self,
        model: Segmentor,
        weighting: Optional[WeightingFactory],
        cfg: SelfTrainingConfig,
        num_classes: int,
        mean,
        std,
        seed: int = 0,
        imnet_model: Optional[nn.Module] = None,
    ):
        super().__init__(model, weighting)
        self.cfg = cfg
        self.num_classes = int(num_classes)
        self.seed = int(seed)
        self.register_normalization(mean, std)
        self.teacher = frozen_copy(model)
        self.source_ce = self.make_ce("source")
        self.target_ce = self.make_ce("target")
        self._imnet: tuple[nn.Module, ...] = ()
        if imnet_model is not None:
            imnet_model.eval().requires_grad_(False)
            self._imnet = (imnet_model,)
        # lookup table over label values 0..255: True for the feature-distance ("thing") classes
        lut = torch.zeros(256, dtype=torch.bool)
        lut[torch.as_tensor(list(cfg.fdist_classes), dtype=torch.long)] = True
        self.register_buffer("fdist_lut", lut, persistent=False)
        self._fdist_all = len(cfg.fdist_classes) == 0

    @classmethod
    def from_config(cls, cfg, model, weighting=None):
        """With ``method.self_training.imnet_model`` set (a weights path, or ``imagenet`` for a
        backbone whose weights come with a package), the frozen ImageNet model of the feature
        distance is built like the segmentor and loaded from it."""
        st = getattr(cfg.method, cls.registered_name or "self_training")
        imnet = None
        if st.imnet_model:
            from balda.models import build_model
            from balda.models.weights import load_pretrained

            imnet = build_model(dataclasses.replace(cfg.model, pretrained=None, init=None))
            load_pretrained(imnet, st.imnet_model)
        strategy = cls(
            model,
            weighting,
            st,
            cfg.model.num_classes,
            cfg.data.mean,
            cfg.data.std,
            seed=cfg.train.seed,
            imnet_model=imnet,
        )
        strategy.configure(cfg)
        return strategy

    def configure(self, cfg) -> None:
        """Read what a subclass needs from the run config beyond ``method.<name>`` (default: nothing)."""

    @property
    def imnet_model(self) -> Optional[nn.Module]:
        return self._imnet[0] if self._imnet else None

    @property
    def fdist_enabled(self) -> bool:
        return bool(self._imnet) and self.cfg.fdist_lambda > 0

    def current_alpha(self, step: int) -> float:
        return ema_alpha(step, self.cfg.ema_alpha)

    def eval_model(self, model: Segmentor) -> nn.Module:
        """The student (DAFormer evaluates the student); the EMA model is :attr:`teacher`."""
        return model

    # ----------------------------------------------------------------------------------- losses
    def _imnet_features(self, images: torch.Tensor) -> torch.Tensor:
        net = self._imnet[0]
        p = next(net.parameters(), None)
        if p is not None and p.device != images.device:
            net.to(images.device)
        with torch.no_grad():
            out = net.backbone(images) if hasattr(net, "backbone") else net(images)
        return _last_feature(out).detach()

    def compute_losses(self, model: Segmentor, batch: dict, step: int) -> StepOutput:
        cfg = self.cfg
        src, tgt = batch["source"], batch["target"]
        xs, ys, xt = src["image"], src["label"], tgt["image"]
        if xs.shape[-2:] != xt.shape[-2:] or ys.shape[-2:] != xs.shape[-2:]:
            raise ValueError(
                "self-training mixes source and target pixels: source image "
                f"{tuple(xs.shape[-2:])}, source label {tuple(ys.shape[-2:])} and target image "
                f"{tuple(xt.shape[-2:])} must have the same size (use the same crop)"
            )
        losses: dict[str, torch.Tensor] = {}
        weights: dict[str, float] = {}
        logs: dict[str, torch.Tensor] = {}
        task = ["source.ce"]

        # 1. source CE (+ backbone bottleneck features for the feature distance)
        captured: list = []
        hook = None
        if self.fdist_enabled:
            hook = unwrap(model).backbone.register_forward_hook(lambda m, i, o: captured.append(o))
        try:
            out_s = model(xs)
        finally:
            if hook is not None:
                hook.remove()
        self.add_source_losses(out_s, src, losses, weights, logs, task)

        # 5. ImageNet feature distance on thing classes
        if self.fdist_enabled:
            feat = _last_feature(captured[-1])
            feat_in = self._imnet_features(xs)
            mask = None
            if not self._fdist_all:
                small = downscale_label_ratio(ys, feat.shape[-2:], cfg.fdist_scale_min_ratio, self.num_classes)
                mask = self.fdist_lut[small.clamp(0, 255)]
            losses["source.fdist"] = feature_distance(feat, feat_in, mask)
            weights["source.fdist"] = cfg.fdist_lambda
            task.append("source.fdist")

        # 2. pseudo-labels from the teacher on the un-augmented target
        g = step_generator(self.seed, step, xt.device)
        with torch.no_grad():
            t_out = self.teacher(xt)
        # label construction and photometric augmentation in float32 (outside any autocast region)
        with torch.no_grad(), torch.autocast(xt.device.type, enabled=False):
            pseudo, pix_w, q = pseudo_label(
                t_out.logits,
                tuple(xt.shape[-2:]),
                cfg.pseudo_threshold,
                cfg.ignore_top,
                cfg.ignore_bottom,
                cfg.pseudo_weight,
            )
            # 3. ClassMix (source b mod B_s pasted on target b) + strong augmentation
            Bs, Bt = xs.shape[0], xt.shape[0]
            pair = torch.arange(Bt, device=xs.device) % Bs if Bs != Bt else None
            if pair is not None:
                xs_p, ys_p = xs.index_select(0, pair), ys.index_select(0, pair)
            else:
                xs_p, ys_p = xs, ys
            if cfg.mix == "classmix":
                mask = classmix_masks(ys_p, g)
            else:
                mask = torch.zeros_like(pseudo, dtype=torch.bool)
            x_mix = mix(mask, xs_p, xt)
            y_mix, w_mix = mixed_targets(mask, ys_p, pseudo, pix_w)
            extra = self.mixed_extras(mask, src, pair, t_out, pseudo, y_mix)
            x_mix = color_jitter(x_mix, cfg.color_jitter_strength, 1.0 - cfg.color_jitter_p, g, self.mean, self.std)
            if cfg.blur:
                x_mix = gaussian_blur(x_mix, g)

        # 4. mixed pseudo-label CE
        out_m = model(x_mix)
        self.add_target_losses(out_m, y_mix, w_mix, mask, extra, losses, weights, logs)

        logs["st/pseudo_conf"] = q.mean()
        logs["st/ema_alpha"] = torch.tensor(self.current_alpha(step))
        logs["st/mix_ratio"] = mask.float().mean()
        return StepOutput(losses=losses, weights=weights, task=tuple(task), logs=logs)

    # ----------------------------------------------- extension points (panoptic self-training)
    def add_source_losses(self, out_s, src: dict, losses: dict, weights: dict, logs: dict, task: list) -> None:
        """Step 1: ``source.ce`` of the source output (a subclass adds its own source terms)."""
        losses["source.ce"], ce_logs = self.source_ce(out_s.logits, src["label"])
        logs.update(ce_logs)

    def mixed_extras(self, mask, src: dict, pair, t_out, pseudo, y_mix) -> dict:
        """Step 3: further mixed targets from the ClassMix ``mask``, the source part (``pair``: the
        source index of each target image, None when the batches pair one to one), the teacher's
        output and the pseudo-labels; default none."""
        return {}

    def add_target_losses(self, out_m, y_mix, w_mix, mask, extra: dict, losses: dict, weights: dict, logs: dict):
        """Step 4: ``target.ce`` of the mixed image (trade-off ``lambda_target``)."""
        losses["target.ce"], ce_logs = self.target_ce(out_m.logits, y_mix, pixel_weights=w_mix)
        weights["target.ce"] = self.cfg.lambda_target
        logs.update(ce_logs)

    # -------------------------------------------------------------------------------- post-step
    def after_step(self, model: Segmentor, step: int) -> dict[str, torch.Tensor]:
        """EMA update of the teacher with ``a_t = min(1 - 1/(t+1), ema_alpha)``."""
        ema_update(self.teacher, unwrap(model), self.current_alpha(step))
        return {}
