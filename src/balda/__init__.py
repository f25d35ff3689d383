"""balda - balanced domain adaptation: unsupervised and active domain adaptation under class imbalance.

The Python API mirrors the command line::

    import balda

    cfg = balda.load_config("streets/self_training", ["balancing.class_weights=gbw"])
    metrics = balda.train(cfg)                      # balda train streets/self_training ...
    print(metrics.miou, metrics.format_table())     # miou is a fraction in [0, 1]; tables print percent
    balda.evaluate("runs/streets/self_training")    # balda eval RUN
    balda.predict("runs/streets/self_training", ["photos/"], out="preds/")   # balda predict RUN INPUTS
    balda.export("runs/streets/self_training", "model.pt")                   # balda export RUN OUT

Submodules: :mod:`balda.config`, :mod:`balda.data`, :mod:`balda.models`, :mod:`balda.methods`,
:mod:`balda.balancing`, :mod:`balda.active`, :mod:`balda.engine`, :mod:`balda.experiments`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.2.0"

__all__ = ["__version__", "load_config", "train", "evaluate", "predict", "export"]

if TYPE_CHECKING:  # pragma: no cover
    from balda.config import Config


def load_config(config, overrides=()) -> Config:
    """A config from a YAML path or a shipped config name (``streets/self_training``) with dotted
    ``key=value`` overrides (see :func:`balda.config.load_config`)."""
    from balda.config import load_config as _load
    from balda.config import resolve_config

    return _load(resolve_config(config), list(overrides))


def train(config, overrides=(), resume=False, progress=None):
    """Train ``config`` (a :class:`~balda.config.Config`, a YAML path or a shipped config name) and
    return the final :class:`~balda.engine.metrics.Metrics` (see :func:`balda.engine.trainer.train`)."""
    from balda.config import Config
    from balda.engine.trainer import train as _train

    cfg = config if isinstance(config, Config) else load_config(config, overrides)
    return _train(cfg, resume=resume, progress=progress)


def evaluate(run, overrides=(), best=False, export_dir=None, progress=True):
    """Evaluate a run folder or checkpoint on its validation split (see :func:`balda.engine.predict.evaluate_run`)."""
    from balda.engine.predict import evaluate_run

    return evaluate_run(run, overrides=overrides, best=best, export_dir=export_dir, progress=progress)


def predict(run, inputs, out=None, **kwargs):
    """Segment images, folders, globs or videos with a trained run (see :func:`balda.engine.predict.predict`)."""
    from balda.engine.predict import predict as _predict

    return _predict(run, inputs, out=out, **kwargs)


def export(run, out, best=False):
    """Write a run's model as a plain weights file that ``torch.load`` opens with its default
    ``weights_only=True`` (see :func:`balda.core.checkpoint.export_weights`)."""
    from balda.core.checkpoint import export_weights

    return export_weights(run, out, best=best)
