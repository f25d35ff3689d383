"""Range checks of config values, run when a config is loaded (see :mod:`balda.config`)."""

from __future__ import annotations

import re
from typing import Any

from balda.config.schema import (
    ActiveConfig,
    BalancingConfig,
    CBDAConfig,
    DataConfig,
    DatasetConfig,
    EvalConfig,
    GBWConfig,
    GHConfig,
    ModelConfig,
    OptimConfig,
    RCSConfig,
    TrainConfig,
)


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
