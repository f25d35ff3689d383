"""The errors balda raises on bad input: one base class, one subclass per kind of input.

Every error a user can cause (a config key, a data file, a weights file, a checkpoint, a prepared
folder, a non-finite loss) is a :class:`BaldaError`, so a caller (the CLI, a notebook) catches one
class and prints one line; each message names the key or the file. The subclasses keep the
built-in base they always had (``ValueError``, ``RuntimeError``, ``FloatingPointError``), so code
that caught those still works.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "BaldaError",
    "ConfigError",
    "DataError",
    "WeightsError",
    "CheckpointError",
    "PreparedError",
    "NonFiniteLossError",
]


class BaldaError(Exception):
    """Base class of every error balda raises on bad input (its message names the key or file)."""


class ConfigError(BaldaError, ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


class DataError(BaldaError, RuntimeError):
    """A dataset file is missing, unreadable or malformed (the message names the file, ``path`` holds it)."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = None if path is None else Path(path)


class WeightsError(BaldaError, ValueError):
    """A pretrained-weights file is missing, unreadable, or does not match the model."""


class CheckpointError(BaldaError, RuntimeError):
    """A checkpoint is missing, unreadable, or does not match the run's config."""


class PreparedError(BaldaError, ValueError):
    """A prepared folder (CPSL pseudo-labels, prior, prototypes) is missing or inconsistent."""


class NonFiniteLossError(BaldaError, FloatingPointError):
    """A loss became NaN or infinite (the weights were not updated)."""
