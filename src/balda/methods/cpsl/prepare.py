"""Offline preparation of CPSL (docs/cpsl.md, pipeline step 1).

With the warm-up model (source + output-space adversarial training) and over the *target train*
set, :func:`prepare_cpsl` writes a folder holding

* ``p0/NNNNNN.npz`` -- one file per target image ``i`` (``NNNNNN = i``, zero-padded): the fixed
  soft pseudo-label ``p0 = softmax(up(z))`` as ``float16`` (K, H/s, W/s), ``s = pseudo_stride``,
  where ``z`` are the warm-up logits of the (resized) image and ``up`` bilinear resizing
  (align_corners=False) from the decoder resolution to ``(floor(H/s), floor(W/s))``; plus the
  per-image statistics needed for the prior and the prototypes (so a resumed run never recomputes a
  finished image): ``pix_count`` (K,) = pixel counts of ``argmax_k p0``, ``feat_sum`` (K, C) =
  ``sum_{j: yhat_j = k} f_j / ||f_j||`` over the decoder-resolution positions ``j`` (decoder
  features ``f``, ``yhat = argmax_k z``), ``feat_count`` (K,) the matching counts, ``image_size``.
  Every file is written atomically (temporary file + fsync + rename), so a file that exists is
  complete; existing files are skipped when the preparation is run again (resume).
* ``prototypes.npy`` -- the prototype initialisation ``c_k = m_k / ||m_k||`` with
  ``m_k = sum_i feat_sum_i[k] / sum_i feat_count_i[k]`` the class mean of the L2-normalised
  features (a class the warm-up model never predicts gets a fixed random unit vector, seed 0, so
  that normalising it is well defined).
* ``manifest.json`` -- written last: ``num_classes``, ``pseudo_stride``, ``count``,
  ``feature_dim``, the class prior ``r_k = n_k / sum_j n_j`` with ``n_k = sum_i pix_count_i[k]``,
  the dataset names (and fingerprint), sizes, and the optional warm-up checkpoint / weights.
  Its presence marks the folder as complete.
* ``model.pt`` (only from :func:`prepare_from_checkpoint`) -- the warm-up weights ``{"model":
  state_dict}``; :class:`~balda.methods.cpsl.CPSLStrategy` initialises the student from it.

:func:`load_prepared` reads and validates a folder (errors name the folder or file).

Reference: Li et al., "Class-Balanced Pixel-Level Self-Labeling for Domain Adaptive Semantic
Segmentation", CVPR 2022 (CPSL), Sec. 3 (pseudo-labels and prototypes from the warm-up model).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from balda.core.atomic import atomic_write
from balda.core.errors import PreparedError
from balda.core.progress import progress_bar
from balda.core.registry import BenchEntry, register_bench, register_command

__all__ = [
    "PreparedError",
    "prepare_cpsl",
    "prepare_from_checkpoint",
    "load_prepared",
    "p0_path",
    "check_prepared_dataset",
    "MANIFEST",
    "PROTOTYPES",
    "MODEL_WEIGHTS",
    "FORMAT",
]

MANIFEST = "manifest.json"
PROTOTYPES = "prototypes.npy"
MODEL_WEIGHTS = "model.pt"
PARAMS = "prepare_params.json"
P0_DIR = "p0"
FORMAT = "balda-cpsl-prepared"
VERSION = 1


def p0_path(out_dir: str | Path, i: int) -> Path:
    """Path of the per-image file of target image ``i``."""
    return Path(out_dir) / P0_DIR / f"{int(i):06d}.npz"


# ------------------------------------------------------------------------------------ file helpers
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # pragma: no cover - not every filesystem allows it
        pass


def _atomic_json(path: Path, obj: Any) -> None:
    data = json.dumps(obj, indent=1).encode()
    atomic_write(path, lambda f: f.write(data))


# ------------------------------------------------------------------------------------- statistics
@torch.no_grad()
def image_statistics(model: torch.nn.Module, images: torch.Tensor, pseudo_stride: int) -> dict[str, torch.Tensor]:
    """Per-image preparation statistics of a batch of normalised images (B,3,H,W).

    Returns ``p0`` (B,K,H//s,W//s) float32 softmax of the bilinearly resized logits, ``pix_count``
    (B,K) counts of ``argmax p0``, ``feat_sum`` (B,K,C) sums of the L2-normalised decoder features
    grouped by the decoder-resolution argmax of the logits, ``feat_count`` (B,K).
    """
    out = model(images)
    logits, feats = out.logits.float(), out.features.float()
    B, K = logits.shape[:2]
    C = feats.shape[1]
    H, W = images.shape[-2:]
    s = int(pseudo_stride)
    size = (max(1, H // s), max(1, W // s))
    p0 = torch.softmax(F.interpolate(logits, size=size, mode="bilinear", align_corners=False), dim=1)
    lab_p0 = p0.argmax(dim=1).reshape(B, -1)
    offs = torch.arange(B, device=lab_p0.device)[:, None] * K
    pix_count = torch.bincount((lab_p0 + offs).reshape(-1), minlength=B * K).reshape(B, K)
    if feats.shape[-2:] != logits.shape[-2:]:
        logits = F.interpolate(logits, size=feats.shape[-2:], mode="bilinear", align_corners=False)
    lab = logits.argmax(dim=1).reshape(B, -1) + offs  # (B, h*w) in [0, B*K)
    fn = F.normalize(feats, dim=1).flatten(2).transpose(1, 2).reshape(-1, C)  # (B*h*w, C)
    feat_sum = torch.zeros(B * K, C, dtype=torch.float64, device=fn.device)
    feat_sum.index_add_(0, lab.reshape(-1), fn.double())
    feat_count = torch.bincount(lab.reshape(-1), minlength=B * K).reshape(B, K)
    return {"p0": p0, "pix_count": pix_count, "feat_sum": feat_sum.reshape(B, K, C), "feat_count": feat_count}


def _load_image(dataset, i: int, resize) -> np.ndarray:
    image, _ = dataset.load(i)
    if resize is not None:
        from balda.data.transforms import resize as resize_fn

        image, _ = resize_fn(image, None, resize)
    return image


def _groups(indices: Sequence[int], batch_size: int, load):
    """Yield lists of (index, image) of at most ``batch_size`` items with equal image shapes."""
    batch: list = []
    for i in indices:
        image = load(i)
        if batch and batch[0][1].shape != image.shape:
            yield batch
            batch = []
        batch.append((i, image))
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _unit_random(k: int, dim: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((k, dim))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _aggregate(out_dir: Path, n: int) -> dict:
    """Sum the per-image statistics of all ``n`` files (small arrays only; p0 is not read)."""
    pix = feat_sum = feat_count = None
    p0_shapes, img_sizes = set(), set()
    for i in range(n):
        path = p0_path(out_dir, i)
        try:
            with np.load(path) as z:
                pc, fs, fc = (
                    z["pix_count"].astype(np.int64),
                    z["feat_sum"].astype(np.float64),
                    z["feat_count"].astype(np.int64),
                )
                p0_shapes.add(tuple(int(v) for v in z["p0_shape"]))
                img_sizes.add(tuple(int(v) for v in z["image_size"]))
        except Exception as e:  # noqa: BLE001
            raise PreparedError(
                f"CPSL prepared file {path} is unreadable ({type(e).__name__}: {e}); "
                "delete it and run the preparation again (it resumes)"
            ) from None
        if pix is None:
            pix, feat_sum, feat_count = pc, fs, fc
        else:
            if fs.shape != feat_sum.shape:
                raise PreparedError(
                    f"CPSL prepared file {path} has feature statistics of shape {fs.shape}, "
                    f"other files {feat_sum.shape}: the folder mixes two models"
                )
            pix, feat_sum, feat_count = pix + pc, feat_sum + fs, feat_count + fc
    return {
        "pix": pix,
        "feat_sum": feat_sum,
        "feat_count": feat_count,
        "p0_shapes": p0_shapes,
        "image_sizes": img_sizes,
    }


def _check_params(out_dir: Path, params: dict) -> None:
    """Record the preparation parameters; refuse to resume a folder prepared differently."""
    path = out_dir / PARAMS
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise PreparedError(f"{path} is unreadable ({e}); remove the folder {out_dir} and start again") from None
        diff = {k: (old.get(k), v) for k, v in params.items() if old.get(k) != v}
        if diff:
            raise PreparedError(
                f"CPSL prepared folder {out_dir} was started with other parameters "
                f"({', '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in diff.items())}); "
                "use a fresh output folder or delete it"
            )
    else:
        _atomic_json(path, params)


# ---------------------------------------------------------------------------------------- prepare
def prepare_cpsl(
    model: torch.nn.Module,
    dataset,
    out_dir: str | Path,
    mean: Sequence[float],
    std: Sequence[float],
    device: str | torch.device = "cpu",
    pseudo_stride: int = 4,
    progress: bool = True,
    batch_size: int = 1,
    resize: Optional[Sequence[int]] = None,
    checkpoint: Optional[str] = None,
    model_weights: Optional[str] = None,
) -> dict:
    """Write the CPSL prepared folder (see module docstring) and return its manifest.

    ``model``: the warm-up :class:`~balda.models.base.Segmentor`; ``dataset``: the target train
    set (``len``, ``names``, ``load(i) -> (uint8 HxWx3 image, label or None)``); images are resized
    to ``resize`` = [H, W] (bilinear, as the training pipeline does with ``data.target.resize``) and
    normalised with ``mean``/``std`` (0..255 units). Resumable: images whose file exists are
    skipped; ``manifest.json`` is (re)written at the end from all per-image files.
    ``checkpoint``/``model_weights`` are recorded in the manifest (the latter relative to the folder).
    """
    out_dir = Path(out_dir)
    s = int(pseudo_stride)
    if s < 1:
        raise ValueError(f"pseudo_stride must be >= 1, got {pseudo_stride}")
    n = len(dataset)
    if n == 0:
        raise PreparedError(f"CPSL preparation: the target dataset {dataset!r} is empty")
    K = int(model.num_classes)
    resize_l = None if resize is None else [int(v) for v in resize]
    names = [str(x) for x in getattr(dataset, "names", [str(i) for i in range(n)])]
    _check_params(
        out_dir,
        {
            "format": FORMAT,
            "version": VERSION,
            "num_classes": K,
            "pseudo_stride": s,
            "resize": resize_l,
            "count": n,
            "checkpoint": checkpoint,
            "mean": [float(v) for v in mean],
            "std": [float(v) for v in std],
        },
    )
    (out_dir / P0_DIR).mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    was_training = model.training
    model.to(device).eval()
    mean_t = torch.as_tensor([float(v) for v in mean], device=device).view(1, 3, 1, 1)
    std_t = torch.as_tensor([float(v) for v in std], device=device).view(1, 3, 1, 1)
    todo = [i for i in range(n) if not p0_path(out_dir, i).is_file()]

    try:
        with progress_bar("CPSL prepare", n, progress, completed=n - len(todo)) as bar:
            for group in _groups(todo, max(1, int(batch_size)), lambda i: _load_image(dataset, i, resize_l)):
                imgs = torch.from_numpy(np.stack([im for _, im in group])).to(device)
                x = (imgs.permute(0, 3, 1, 2).float() - mean_t) / std_t
                st = image_statistics(model, x, s)
                p0 = st["p0"].to(torch.float16).cpu().numpy()
                pix = st["pix_count"].cpu().numpy()
                fsum = st["feat_sum"].float().cpu().numpy()
                fcnt = st["feat_count"].cpu().numpy()
                H, W = x.shape[-2:]
                for b, (i, _) in enumerate(group):
                    arrays = {
                        "p0": p0[b],
                        "pix_count": pix[b],
                        "feat_sum": fsum[b],
                        "feat_count": fcnt[b],
                        "p0_shape": np.asarray(p0.shape[-2:], np.int64),
                        "image_size": np.asarray([H, W], np.int64),
                    }
                    atomic_write(p0_path(out_dir, i), lambda f, a=arrays: np.savez(f, **a))
                bar.advance(len(group))
    finally:
        model.train(was_training)
    _fsync_dir(out_dir / P0_DIR)

    agg = _aggregate(out_dir, n)
    pix, fsum, fcnt = agg["pix"], agg["feat_sum"], agg["feat_count"]
    if pix.shape != (K,):
        raise PreparedError(
            f"CPSL prepared folder {out_dir}: per-image files hold {pix.shape[0]} classes, the model {K}"
        )
    C = fsum.shape[1]
    means = fsum / np.maximum(fcnt, 1)[:, None]
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    protos = np.where(
        (fcnt[:, None] > 0) & (norms > 1e-12), means / np.maximum(norms, 1e-12), _unit_random(K, C)
    ).astype(np.float32)
    atomic_write(out_dir / PROTOTYPES, lambda f: np.save(f, protos))
    prior = pix.astype(np.float64) / max(int(pix.sum()), 1)
    p0_shapes, sizes = agg["p0_shapes"], agg["image_sizes"]
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "num_classes": K,
        "pseudo_stride": s,
        "count": n,
        "feature_dim": int(C),
        "prior": prior.tolist(),
        "pixel_counts": pix.tolist(),
        "feature_counts": fcnt.tolist(),
        "p0_shape": list(next(iter(p0_shapes))) if len(p0_shapes) == 1 else None,
        "image_size": list(next(iter(sizes))) if len(sizes) == 1 else None,
        "resize": resize_l,
        "names": names,
        "fingerprint": dataset.fingerprint() if hasattr(dataset, "fingerprint") else None,
        "checkpoint": checkpoint,
        "model_weights": model_weights,
        "files": f"{P0_DIR}/{{index:06d}}.npz",
        "prototypes": PROTOTYPES,
    }
    _atomic_json(out_dir / MANIFEST, manifest)
    _fsync_dir(out_dir)
    return manifest


def prepare_from_checkpoint(
    ckpt_path: str | Path,
    out_dir: str | Path,
    overrides: Sequence[str] = (),
    device: str = "auto",
    progress: bool = True,
    batch_size: int = 1,
) -> dict:
    """``balda cpsl prepare RUN_OR_CKPT``: prepare from a warm-up checkpoint (or run folder).

    The model and the target train set are built from the checkpoint's saved config
    (``ckpt['config']``, with dotted ``overrides`` applied, e.g. ``method.cpsl.pseudo_stride=8``);
    the target set is ``data.target`` with ``labelled=False``, resized to ``data.target.resize``.
    The warm-up weights are copied to ``out_dir/model.pt`` (the CPSL strategy starts from them).
    A run folder resolves to its ``final.pt`` (else ``last.pt``).
    """
    from balda.config import config_from_dict, merge_dicts, parse_overrides, to_dict
    from balda.core.checkpoint import (
        CheckpointError,
        atomic_save,
        load_checkpoint,
        load_model_weights,
        resolve_checkpoint,
    )
    from balda.data.datasets import build_dataset
    from balda.models import build_model

    path = resolve_checkpoint(ckpt_path)
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt.get("config"), dict):
        raise CheckpointError(
            f"checkpoint {path} holds no saved config ('config' entry); it was not written by the balda trainer"
        )
    cfg = config_from_dict(ckpt["config"], f"checkpoint {path}")
    if overrides:
        cfg = config_from_dict(merge_dicts(to_dict(cfg), parse_overrides(list(overrides))), "command-line overrides")
    model = build_model(replace(cfg.model, pretrained=None))
    load_model_weights(model, ckpt["model"], path)
    dataset = build_dataset(replace(cfg.data.target, labelled=False))
    if device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not (out_dir / MODEL_WEIGHTS).is_file():
        atomic_save({"model": model.state_dict(), "source": str(path)}, out_dir / MODEL_WEIGHTS)
    return prepare_cpsl(
        model,
        dataset,
        out_dir,
        cfg.data.mean,
        cfg.data.std,
        dev,
        pseudo_stride=cfg.method.cpsl.pseudo_stride,
        progress=progress,
        batch_size=batch_size,
        resize=cfg.data.target.resize,
        checkpoint=str(path),
        model_weights=MODEL_WEIGHTS,
    )


# ------------------------------------------------------------------------------------------- load
_REQUIRED = ("format", "version", "num_classes", "pseudo_stride", "count", "feature_dim", "prior")


def load_prepared(directory: str | Path, load_p0: bool = True) -> dict:
    """Read and validate a CPSL prepared folder.

    Returns ``dir`` (Path), ``manifest`` (dict), ``num_classes``, ``pseudo_stride``, ``count``,
    ``prior`` (float64 (K,), normalised), ``prototypes`` (float32 (K, C), unit rows), ``p0``
    (float16 (N, K, h, w) array, or None with ``load_p0=False``), ``names`` and ``model_weights``
    (Path of the warm-up weights or None). Raises :class:`PreparedError` naming the folder or the
    offending file.
    """
    d = Path(directory)
    if not d.is_dir():
        raise PreparedError(f"CPSL prepared folder not found: {d} (create it with `balda cpsl prepare`)")
    mpath = d / MANIFEST
    if not mpath.is_file():
        raise PreparedError(
            f"{mpath} not found: the CPSL preparation of {d} did not finish; run "
            "`balda cpsl prepare` again with the same output folder (it resumes)"
        )
    try:
        m = json.loads(mpath.read_text())
    except (OSError, ValueError) as e:
        raise PreparedError(f"{mpath} is unreadable ({e})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        fmt = m.get("format") if isinstance(m, dict) else None
        raise PreparedError(f"{mpath} is not a CPSL prepared manifest (format {fmt!r}, expected {FORMAT!r})")
    missing = [k for k in _REQUIRED if k not in m]
    if missing:
        raise PreparedError(f"{mpath} lacks the entries {missing}")
    if int(m["version"]) != VERSION:
        raise PreparedError(f"{mpath} has format version {m['version']}, this balda reads version {VERSION}")
    K, n, C = int(m["num_classes"]), int(m["count"]), int(m["feature_dim"])
    prior = np.asarray(m["prior"], dtype=np.float64)
    if prior.shape != (K,) or not np.all(np.isfinite(prior)) or np.any(prior < 0) or prior.sum() <= 0:
        raise PreparedError(
            f"{mpath}: 'prior' must be {K} finite non-negative numbers with a positive sum, got {m['prior']!r}"
        )
    prior = prior / prior.sum()
    ppath = d / PROTOTYPES
    if not ppath.is_file():
        raise PreparedError(f"{ppath} not found (incomplete CPSL prepared folder)")
    try:
        protos = np.load(ppath).astype(np.float32)
    except Exception as e:  # noqa: BLE001
        raise PreparedError(f"{ppath} is unreadable ({type(e).__name__}: {e})") from None
    if protos.shape != (K, C) or not np.all(np.isfinite(protos)):
        raise PreparedError(f"{ppath}: expected finite prototypes of shape ({K}, {C}), got {protos.shape}")
    norms = np.linalg.norm(protos, axis=1)
    if np.any(norms < 1e-6):
        raise PreparedError(f"{ppath}: prototype rows must be non-zero (L2-normalised)")
    protos = protos / norms[:, None]
    p0 = None
    absent = [str(p0_path(d, i)) for i in range(n) if not p0_path(d, i).is_file()]
    if absent:
        raise PreparedError(
            f"CPSL prepared folder {d}: {len(absent)} of {n} soft pseudo-label files are missing "
            f"(first: {absent[0]}); run `balda cpsl prepare` again (it resumes)"
        )
    if load_p0:
        shape = m.get("p0_shape")
        if shape is None:
            raise PreparedError(
                f"{mpath}: the target images have different sizes, so their soft pseudo-labels "
                "cannot be stacked; prepare with data.target.resize set"
            )
        h, w = int(shape[0]), int(shape[1])
        p0 = np.empty((n, K, h, w), dtype=np.float16)
        for i in range(n):
            path = p0_path(d, i)
            try:
                with np.load(path) as z:
                    arr = z["p0"]
            except Exception as e:  # noqa: BLE001
                raise PreparedError(
                    f"CPSL prepared file {path} is unreadable ({type(e).__name__}: {e}); delete it "
                    "and run `balda cpsl prepare` again"
                ) from None
            if arr.shape != (K, h, w):
                raise PreparedError(f"CPSL prepared file {path}: p0 has shape {arr.shape}, expected {(K, h, w)}")
            p0[i] = arr
    mw = m.get("model_weights")
    return {
        "dir": d,
        "manifest": m,
        "num_classes": K,
        "pseudo_stride": int(m["pseudo_stride"]),
        "count": n,
        "prior": prior,
        "prototypes": protos,
        "p0": p0,
        "names": list(m.get("names") or []),
        "model_weights": (d / mw) if mw else None,
    }


def check_prepared_dataset(prepared: dict, dataset) -> None:
    """Raise :class:`PreparedError` if ``dataset`` (the training target set) is not the one the
    folder was prepared on (item count and names must match: batch indices address p0 by index)."""
    m = prepared["manifest"]
    names = [str(x) for x in getattr(dataset, "names", [])]
    if len(dataset) != int(m["count"]) or (prepared["names"] and names and names != prepared["names"]):
        raise PreparedError(
            f"CPSL prepared folder {prepared['dir']} was made for {m['count']} target images "
            f"({(prepared['names'] or ['?'])[0]}, ...), the training target set has {len(dataset)} "
            f"({(names or ['?'])[0]}, ...); prepare it again for this data.target"
        )


# ----------------------------------------------------------------------------- CLI and bench entries
def _cmd_prepare(args) -> int:
    prepare_from_checkpoint(
        Path(args.run),
        Path(args.out),
        overrides=args.overrides,
        device=args.device,
        progress=not args.no_progress,
        batch_size=args.batch_size,
    )
    print(f"CPSL pseudo-labels, class prior and prototypes written to {args.out}")
    print(f"train stage 1 with: balda train <config> method.name=cpsl method.cpsl.prepared={args.out}")
    return 0


@register_command("cpsl prepare")
def cli_parser():
    """``balda cpsl prepare RUN_OR_CKPT --out DIR [key=value ...]``."""
    import argparse

    pr = argparse.ArgumentParser(
        prog="balda cpsl prepare",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="From a warm-up run (source-only or adversarial) compute, over the target train set, the fixed "
        "soft pseudo-labels (float16, reduced resolution), the class prior r and the prototype initialisation that "
        "CPSL stage 1 needs. Resumable: images already written are skipped.",
    )
    pr.help_line = "store a warm-up model's soft pseudo-labels, class prior and prototypes for CPSL"
    pr.add_argument("run", metavar="RUN_OR_CKPT", help="the warm-up run folder (its final.pt) or a checkpoint")
    pr.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the run's saved config")
    pr.add_argument("--out", required=True, help="folder to write (use as method.cpsl.prepared)")
    pr.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    pr.add_argument("--batch-size", type=int, default=1, help="images per inference batch")
    pr.add_argument("--no-progress", action="store_true", help="no progress bar")
    pr.set_defaults(func=_cmd_prepare)
    return pr


def prepare_bench_cell(warm_run: Path, out: Path, seed: int, data: Path, progress: bool = False) -> list[str]:
    """``balda bench``: prepare the CPSL folder of a cell from its warm-up run (once per seed) and
    return the override that points stage 1 at it."""
    prepared = Path(out) / f"cpsl_prepared_s{seed}"
    if not (prepared / MANIFEST).is_file():
        over = [
            f"data.target.root={Path(data) / 'target'}",
            f"data.val.root={Path(data) / 'target'}",
            "method.cpsl.pseudo_stride=2",
        ]
        prepare_from_checkpoint(warm_run, prepared, overrides=over, progress=progress)
    return [f"method.cpsl.prepared={prepared}"]


register_bench(
    BenchEntry(
        "cpsl", "streets/cpsl", (), controls=("self_training", "advent"), warmup="advent", prepare=prepare_bench_cell
    ),
    BenchEntry(
        "cpsl+gbw",
        "streets/cpsl",
        ("balancing.class_weights=gbw", "balancing.gbw.mode=scale_free"),
        controls=("cpsl",),
        warmup="advent",
        prepare=prepare_bench_cell,
    ),
)
