"""What ``--resume`` may change: a resumed run must keep training what its checkpoint trained.

The config of a resumed run is compared with the one saved in the checkpoint, key by dotted key.
Keys that only say how the run is watched or where it lives (:data:`FREE`: progress bars, logging
and checkpoint intervals, the evaluation protocol, the validation split, the device) may change
freely. Any other difference - optimiser, schedule, model, method, balancing, training data, seed -
is refused with an error listing each differing key, unless it is allowed explicitly
(``--allow-changes train.iters optim.lr``; a prefix such as ``optim`` allows its whole section).
Allowed changes are applied (a longer schedule really decays over the new length, a new learning
rate really replaces the old one) and recorded in ``<run>/changes.json`` with the step they start
from, so ``config.yaml`` (which is rewritten with the new config) never hides what was trained.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from balda.core.atomic import atomic_write_text
from balda.core.errors import ConfigError

__all__ = ["FREE", "flatten", "config_changes", "check_resume", "record_changes"]

#: Dotted keys (or prefixes) that never change what is trained.
FREE = (
    "name",
    "out_dir",
    "train.progress",
    "train.tensorboard",
    "train.log_every",
    "train.eval_every",
    "train.ckpt_every",
    "train.keep_ckpts",
    "train.device",
    "train.nan_policy",
    "train.max_skipped",
    "eval",
    "data.val",
    "data.num_workers",
    "model.init",
    "model.pretrained",
)


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists are leaves)."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _covered(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def config_changes(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose value differs between two config dicts: ``{key: (old, new)}`` (keys only
    one side has count as changed, with ``None`` on the other), the :data:`FREE` keys left out."""
    a, b = flatten(old), flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and not _covered(k, FREE)}


def check_resume(old: dict, new: dict, allow: Iterable[str] = (), source: str = "") -> dict[str, tuple[Any, Any]]:
    """The allowed changes between the checkpoint's config ``old`` and ``new``; raises
    :class:`ConfigError` naming every other differing key (old -> new) and how to allow it."""
    allow = tuple(allow)
    changes = config_changes(old, new)
    refused = {k: v for k, v in changes.items() if not _covered(k, allow)}
    if refused:
        lines = "; ".join(f"{k}: {o!r} -> {n!r}" for k, (o, n) in refused.items())
        raise ConfigError(
            f"--resume: the config differs from the one the checkpoint{' ' + source if source else ''} "
            f"was trained with ({lines}); resume with the original config, or allow the change "
            f"explicitly with --allow-changes {' '.join(refused)}"
        )
    return changes


def record_changes(run_dir: Path, step: int, changes: dict[str, tuple[Any, Any]]) -> None:
    """Append ``{"step", "changes": {key: [old, new]}}`` to ``<run>/changes.json``."""
    path = Path(run_dir) / "changes.json"
    try:
        history = json.loads(path.read_text()) if path.is_file() else []
    except ValueError:
        history = []
    history.append({"step": int(step), "changes": {k: [o, n] for k, (o, n) in changes.items()}})
    atomic_write_text(path, json.dumps(history, indent=1, default=str))
