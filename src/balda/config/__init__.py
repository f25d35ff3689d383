"""Run configuration: plain dataclasses, loaded from YAML with ``key=value`` overrides.

A config file is a YAML mapping whose keys mirror :class:`Config`. A file may start from another
with ``_base_: other.yaml`` (path relative to the file); its keys are merged recursively over the
base. Overrides on the command line use dotted keys: ``train.iters=2000 method.name=self_training``;
values are parsed as YAML (``[512, 512]``, ``null``, ``1e-4``).

Validation is strict: an unknown key, a value of the wrong type or a choice outside its ``Literal``
set raises :class:`ConfigError` naming the dotted key and the file it came from.
"""

from __future__ import annotations

from balda.config.checks import momentum, non_negative, optional, pair_of_positive_ints, positive, probability
from balda.config.loading import (
    CONFIG_ROOT,
    _coerce,
    _from_dict,
    _read_yaml,
    config_from_dict,
    load_config,
    merge_dicts,
    parse_overrides,
    resolve_config,
    save_config,
    shipped_configs,
    to_dict,
)
from balda.config.schema import (
    ActiveConfig,
    BalancingConfig,
    CBDAConfig,
    Config,
    DataConfig,
    DatasetConfig,
    EvalConfig,
    GBWConfig,
    GHConfig,
    MethodConfig,
    ModelConfig,
    OptimConfig,
    RCSConfig,
    TrainConfig,
)
from balda.core.errors import ConfigError

__all__ = [
    "ActiveConfig",
    "BalancingConfig",
    "CBDAConfig",
    "CONFIG_ROOT",
    "Config",
    "ConfigError",
    "DataConfig",
    "DatasetConfig",
    "EvalConfig",
    "GBWConfig",
    "GHConfig",
    "MethodConfig",
    "ModelConfig",
    "OptimConfig",
    "RCSConfig",
    "TrainConfig",
    "config_from_dict",
    "load_config",
    "merge_dicts",
    "momentum",
    "non_negative",
    "optional",
    "pair_of_positive_ints",
    "parse_overrides",
    "positive",
    "probability",
    "resolve_config",
    "save_config",
    "shipped_configs",
    "to_dict",
    "_coerce",
    "_from_dict",
    "_read_yaml",
]
