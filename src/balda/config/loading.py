"""Loading configs: YAML with ``_base_`` inheritance, dotted overrides, strict typed conversion and
range checks into the dataclasses of :mod:`balda.config.schema`; shipped configs by name."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from balda.config.checks import _CHECKS
from balda.config.schema import Config, MethodConfig, _method_dict
from balda.core.errors import ConfigError


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
CONFIG_ROOT = Path(__file__).resolve().parent.parent / "configs"


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
