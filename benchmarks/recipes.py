#!/usr/bin/env python
"""Recipe check: every shipped real-data recipe (``gta2cs/*``, ``syn2cs/*``) end to end, a few iterations.

Real GTA5 / SYNTHIA / Cityscapes cannot be shipped, so the check first writes procedural stand-ins
in the real formats and shapes into a cache folder (reused when complete), a few images each:

* a GTA5-format source at 1052x1914 with the quirks of the real download (two images 1914x1050,
  one label a few pixels smaller than its image), :func:`balda.data.streets.generate_streets`;
* a SYNTHIA-RAND-CITYSCAPES-format source at 760x1280 (16-bit label PNGs);
* a Cityscapes-format target at 1024x2048 (train and val), shared by both sources.

Then, per recipe, ``balda train`` (in process, :func:`balda.engine.trainer.train`) with the recipe's
own crop, batch, model, method and balancing, random init (``method.self_training.imnet_model=null``;
DeepLabV2's ResNets load stand-in ImageNet weights through ``model.pretrained``: random weights with
BatchNorm statistics of the source, :func:`ensure_standin_weights`, since its frozen BatchNorm with
the initial statistics lets a random ResNet-101 diverge at the first step; MiT has LayerNorm and
starts from ``model.pretrained=null``), ``train.iters=2``, no periodic evaluation or checkpoint,
``eval.max_images=2`` and the final evaluation. Chains run as in the recipes' instructions: the CPSL
warm-up, ``balda cpsl prepare`` on it (:func:`~balda.methods.cpsl.prepare.prepare_from_checkpoint`),
stage 1 from the prepared folder, then the distillation with the stage-1 run as teacher (a recipe's
prerequisites run first even when only it is asked for). RIPU / CBDA recipes get one acquisition
round (``active.rounds=[0.5]``), checked in the label store. Each recipe's error is caught, so one
broken recipe does not hide the others.

``--scale full`` keeps the real crops (512x512 / 512x1024 / 640x1280), resizes and backbones
(ResNet-101, MiT-B5): minutes per recipe on a GPU (``--device cuda``); on a 2-core CPU 2-4 minutes a
recipe (measured), about two hours for all, with ``--max-batch 1`` where the recipe's batch needs more
memory than the machine has (RIPU / CBDA: ResNet-101 at 640x1280, batch 2+2, went past 15 GB and was
killed on a 24 GB machine), and ``--resume`` to do it in parts.
``--scale down`` (the default) runs the same code path with everything geometric down-scaled: images
generated at 1/16 of the real sizes, ``data.*.resize`` and ``eval.size`` to 128 pixels wide, crops to
64 pixels high with the recipe's aspect (64x64, 64x128), the pixel-geometry options scaled alike
(``data.rcs.min_pixels``, ``method.self_training.ignore_top/bottom``, ``active.pixel_radius``),
``model.backbone=resnet18`` for DeepLabV2 and ``mit_b0`` for DAFormer recipes, no loader workers:
seconds per recipe on a CPU.

``--weights resnet101=PATH mit_b5=PATH`` (any backbone name, several at once): real ImageNet files
instead of random init for the recipes whose check runs that backbone, loaded through
``model.pretrained`` as in a real run (and as the self-training feature-distance model, where the
recipe has one); each row says which file it loaded.

``--scale full --small-backbones`` keeps everything of ``full`` (the real-shaped data, crops, resizes,
evaluation modes, pixel options) but the backbone (ResNet-18 / MiT-B0): the data path at the real
shapes, on a CPU, in minutes per recipe instead of the paper backbones' tens of minutes.

Writes a Markdown table (recipe, what ran, ok / the error's first line, seconds, commit and device) to
``benchmarks/results/recipes.md`` (``--markdown``), prints it, and exits non-zero if a recipe failed.
After each recipe the rows so far go to a ledger beside it (``recipes.json``); ``--resume`` goes on from
it, running only what it does not hold as ok, so that a check longer than one sitting (``--scale full``
on a CPU) can be done in parts, across machine restarts if the ledger is committed::

    python benchmarks/recipes.py                                   # all 41 recipes, down-scaled, CPU
    python benchmarks/recipes.py --recipes gta2cs/deeplabv2_ripu syn2cs/deeplabv2_cpsl_distill
    python benchmarks/recipes.py --scale full --device cuda        # the real shapes, on a GPU
    python benchmarks/recipes.py --scale full --device cpu --resume \
        --markdown benchmarks/results/recipes_full.md               # hours on a CPU: in parts
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREFIXES = ("gta2cs/", "syn2cs/")
#: (H, W) of the generated stand-ins: the real sizes, and 1/16 of them.
SHAPES = {
    "full": {"gta5": (1052, 1914), "synthia": (760, 1280), "cityscapes": (1024, 2048)},
    "down": {"gta5": (66, 120), "synthia": (48, 80), "cityscapes": (64, 128)},
}
#: Images per domain: 5 sources (2 odd sizes and 1 resized label among the GTA5 ones), 3 + 2 target.
N_SOURCE, N_TARGET_TRAIN, N_TARGET_VAL = 5, 3, 2
#: Down-scaled geometry: resizes this wide, crops this high.
DOWN_WIDTH, DOWN_CROP_H = 128, 64
ITERS = 2
#: Version of the stand-in ImageNet weights (:func:`ensure_standin_weights`), part of their cached name.
STANDIN_VERSION = 2
#: The strategies with a mean teacher whose options (ImageNet model, ignored rows) the check rescales.
SELF_TRAINING = ("self_training", "panoptic_self_training")


@dataclass
class Result:
    """One row of the table."""

    recipe: str
    ran: str = ""
    status: str = "ok"
    seconds: float = 0.0
    miou: float | None = None  #: the final score: mIoU, or mPQ for a panoptic recipe (``metric``)
    metric: str = "mIoU"
    at: str = ""  #: where it ran: "<commit>, <device>" (a row reused by ``--resume`` keeps its own)
    #: version of the stand-in ImageNet weights it loaded (:data:`STANDIN_VERSION`); None: none loaded
    standin: int | None = None
    #: the source loss at the first and the last iteration, "source.ce 2.95 -> 2.71" (:func:`loss_trend`)
    loss: str | None = None
    reused: bool = False  #: carried over from the ledger by ``--resume`` (not stored in the ledger)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# ----------------------------------------------------------------------------------------- data
def ensure_data(data: Path, scale: str, progress: bool = False) -> dict[str, Path]:
    """Generate (or reuse) the procedural stand-ins of the real datasets under ``data``; returns the
    dataset roots ``{'gta5', 'synthia', 'cityscapes'}``."""
    from balda.data.streets import generate_streets

    shapes = SHAPES[scale]
    common = dict(n_source=N_SOURCE, seed=0, progress=progress, target_size=shapes["cityscapes"])
    generate_streets(
        data / "gta5",
        source_size=shapes["gta5"],
        n_target_train=N_TARGET_TRAIN,
        n_target_val=N_TARGET_VAL,
        quirks=True,
        **common,
    )
    # the SYNTHIA recipes share the Cityscapes stand-in written with the GTA5 one
    generate_streets(
        data / "synthia",
        source_size=shapes["synthia"],
        n_target_train=0,
        n_target_val=0,
        source_format="synthia",
        **common,
    )
    return {
        "gta5": data / "gta5" / "source",
        "synthia": data / "synthia" / "source",
        "cityscapes": data / "gta5" / "target",
    }


# -------------------------------------------------------------------------------------- recipes
def recipe_names() -> list[str]:
    """The shipped real-data recipes."""
    from balda.config import shipped_configs

    return [n for n in shipped_configs() if n.startswith(PREFIXES)]


def prerequisite(name: str) -> str | None:
    """The recipe whose run ``name`` starts from: CPSL stage 1 needs the warm-up, the distillation stage 1."""
    if name.endswith("_cpsl"):
        return name + "_warmup"
    if name.endswith("_cpsl_distill"):
        return name[: -len("_distill")]
    return None


def plan(selected: list[str]) -> list[str]:
    """``selected`` with their prerequisites, each after what it needs (unknown names: ConfigError)."""
    from balda.config import ConfigError

    known = set(recipe_names())
    unknown = [n for n in selected if n not in known]
    if unknown:
        raise ConfigError(f"--recipes: not shipped real-data recipes: {unknown}; see `balda configs`")
    order: list[str] = []

    def add(n: str) -> None:
        if n in order:
            return
        pre = prerequisite(n)
        if pre is not None:
            add(pre)
        order.append(n)

    for n in selected:
        add(n)
    return order


def _down_hw(hw) -> list[int]:
    """A resize (H, W) scaled to :data:`DOWN_WIDTH` pixels wide."""
    return [max(1, round(hw[0] * DOWN_WIDTH / hw[1])), DOWN_WIDTH]


def _small_backbone_name(cfg) -> str:
    return "mit_b0" if cfg.model.name == "daformer" else "resnet18"


def _small_backbone(cfg) -> str:
    return f"model.backbone={_small_backbone_name(cfg)}"


def check_backbone(cfg, scale: str, small_backbones: bool = False) -> str:
    """The backbone a recipe runs with in the check: its own at ``--scale full``, else the small one."""
    return _small_backbone_name(cfg) if scale == "down" or small_backbones else cfg.model.backbone


def standin_path(roots: dict[str, Path], backbone: str) -> Path:
    """Where the stand-in ImageNet weights of a ResNet ``backbone`` are cached (beside the data)."""
    return roots["gta5"].parents[1] / "weights" / f"{backbone}_standin_v{STANDIN_VERSION}.pth"


def ensure_standin_weights(path: Path, backbone: str, source: Path, mean, std, crop: int = 512) -> Path:
    r"""Write (or reuse) stand-in ImageNet weights for a DeepLabV2 ResNet ``backbone`` at ``path``.

    Random weights (torchvision's initialisation, seed 0) whose BatchNorm running statistics are those
    of one forward pass in training mode over two source images (crops of at most ``crop`` pixels,
    normalised by ``mean`` / ``std``), in the torchvision layout a real ImageNet file has, so the
    recipe loads it through ``model.pretrained`` (strictly) as it would the real weights. Why: the
    DeepLabV2 recipes freeze BatchNorm, and with the initial statistics (mean 0, variance 1) a frozen
    BatchNorm normalises nothing, so a random ResNet-101's activations grow by about 1.5x a block
    (to ~2e5 at ``layer4``) and the first SGD step turns the loss non-finite; ImageNet statistics, or
    these, keep every block's input normalised.

    Each residual branch's last BatchNorm scale (``bn3`` of a bottleneck, ``bn2`` of a basic block) is
    set to ``1/sqrt(L)``, ``L`` the number of residual blocks (33 in ResNet-101), so that the L unit-
    variance branches add up to a bounded variance instead of one that grows with depth (the idea of
    zero-init-residual / Fixup, without freezing the branches at zero). Measured (version 1 had
    unit scales; ``benchmarks/standin_scale.py``, ``benchmarks/results/standin_scale.md``): ResNet-101
    on a 256-pixel source crop, feature RMS at ``layer3`` 9.9 -> 1.8, logit std of the DeepLabV2 head
    7.1 -> 2.4, cross-entropy against random labels 11.5 -> 5.3 (ln 19 = 2.9); with unit scales the
    full-scale 2-step AdvEnt warm-up reached a source CE of 1300 (from 17) and CPSL stage 1 started
    from it overflowed at its second step. A real ImageNet file has its own scales; this only keeps the
    check's random network in a numerically sane range. ``STANDIN_VERSION`` is in the cached name."""
    if path.is_file():
        return path
    import torch

    from balda.core.atomic import atomic_write

    state = standin_backbone(backbone, source, mean, std, crop).state_dict()
    atomic_write(path, lambda f: torch.save(state, f))
    return path


def standin_backbone(backbone: str, source: Path, mean, std, crop: int = 512, branch_scale: float | None = None):
    """The network of :func:`ensure_standin_weights`: a random ResNet ``backbone`` (seed 0) whose
    residual branches end in a BatchNorm scale ``branch_scale`` (default ``1/sqrt(blocks)``; 1 was
    version 1) and whose BatchNorm statistics are those of one training-mode pass over two source
    crops; returned in eval mode."""
    import numpy as np
    import torch

    from balda.data.io import read_image
    from balda.models.deeplabv2 import ResNetBackbone

    images = [read_image(p) for p in sorted((source / "images").glob("*.png"))[:2]]
    c = min(crop, *(min(im.shape[:2]) for im in images))
    x = np.stack([im[:c, :c] for im in images]).astype(np.float32)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    torch.manual_seed(0)
    net = ResNetBackbone(backbone)
    blocks = [b for layer in (net.layer1, net.layer2, net.layer3, net.layer4) for b in layer]
    scale = 1.0 / math.sqrt(len(blocks)) if branch_scale is None else float(branch_scale)
    for b in blocks:  # the last BatchNorm of each residual branch: bn3 (bottleneck) or bn2 (basic)
        last_bn = b.bn3 if hasattr(b, "bn3") else b.bn2
        torch.nn.init.constant_(last_bn.weight, scale)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # the running statistics become those of the pass below
    net.train()
    with torch.no_grad():
        net(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous())
    return net.eval()


def overrides_for(
    name: str,
    roots: dict[str, Path],
    out: Path,
    scale: str,
    device: str,
    small_backbones: bool = False,
    max_batch: int | None = None,
    weights: dict[str, Path] | None = None,
) -> list[str]:
    """The dotted overrides that turn recipe ``name`` into a 2-iteration check on the stand-ins;
    ``weights`` (backbone name -> ImageNet file) replaces random init where the check's backbone has one."""
    from balda.config import load_config, resolve_config

    cfg = load_config(resolve_config(name))
    src = roots["synthia"] if cfg.data.source.kind == "synthia" else roots["gta5"]
    backbone = check_backbone(cfg, scale, small_backbones)
    real = (weights or {}).get(backbone)
    # DeepLabV2's frozen BatchNorm needs statistics: stand-in ImageNet weights (ensure_standin_weights)
    pretrained = real or (standin_path(roots, backbone) if cfg.model.name == "deeplabv2" else None)
    ov = [
        f"out_dir={out}",
        f"data.source.root={src}",
        f"data.target.root={roots['cityscapes']}",
        f"data.val.root={roots['cityscapes']}",
        f"model.pretrained={pretrained or 'null'}",
        f"train.iters={ITERS}",
        "train.log_every=1",
        "train.ckpt_every=0",
        "train.eval_every=0",
        "train.progress=false",
        f"train.device={device}",
        "eval.max_images=2",
    ]
    m = cfg.method.name
    if m in SELF_TRAINING and getattr(cfg.method, m).imnet_model:
        ov.append(f"method.{m}.imnet_model={real or 'null'}")
    if cfg.active.enabled:
        ov.append("active.rounds=[0.5]")
    pre = prerequisite(name)
    if cfg.method.name == "cpsl":
        ov.append(f"method.cpsl.prepared={prepared_dir(out, pre)}")
    if cfg.method.name == "distill":
        ov.append(f"method.distill.teacher={out / load_config(resolve_config(pre)).name}")
    if scale == "down":
        ov += _down_overrides(cfg)
    elif small_backbones:
        ov.append(_small_backbone(cfg))
    if scale == "full" and _device_type(device) == "cpu":
        # no loader workers: a worker forked from a CPU trainer shares its heap (a ResNet-101 step at
        # 640x1280 leaves ~13 GB), and the trainer's next step copies those pages (the check was
        # OOM-killed with a 9 GB loader worker beside it); on a GPU the activations are not in that heap
        ov.append("data.num_workers=0")
    if max_batch is not None:  # a machine without the memory for the recipe's batch
        ov += [f"data.batch_{d}={min(getattr(cfg.data, 'batch_' + d), max_batch)}" for d in ("source", "target")]
    return ov


def _down_overrides(cfg) -> list[str]:
    """The down-scaled variant: small backbone, resizes, crop and the options measured in pixels."""
    ov = [
        _small_backbone(cfg),
        "data.num_workers=0",
        "train.tensorboard=false",
    ]
    h, w = cfg.data.crop
    ov.append(f"data.crop=[{DOWN_CROP_H}, {round(DOWN_CROP_H * w / h)}]")
    for key, hw in (
        ("data.source.resize", cfg.data.source.resize),
        ("data.target.resize", cfg.data.target.resize),
        ("eval.size", cfg.eval.size),
    ):
        if hw:
            ov.append(f"{key}={_down_hw(hw)}")
    if cfg.data.rcs.enabled:  # counted on the label files, at the generated size
        kind = "synthia" if cfg.data.source.kind == "synthia" else "gta5"
        (dh, dw), (fh, fw) = SHAPES["down"][kind], SHAPES["full"][kind]
        ov.append(f"data.rcs.min_pixels={max(1, round(cfg.data.rcs.min_pixels * dh * dw / (fh * fw)))}")
    m = cfg.method.name
    if m in SELF_TRAINING:
        st, s = getattr(cfg.method, m), DOWN_CROP_H / h
        ov += [f"method.{m}.ignore_top={round(st.ignore_top * s)}"]
        ov += [f"method.{m}.ignore_bottom={round(st.ignore_bottom * s)}"]
    if cfg.active.enabled and cfg.active.mode == "pixel":  # acquisition works at the label size
        s = SHAPES["down"]["cityscapes"][1] / SHAPES["full"]["cityscapes"][1]
        ov.append(f"active.pixel_radius={max(1, round(cfg.active.pixel_radius * s))}")
    return ov


def prepared_dir(out: Path, warmup: str) -> Path:
    """Where ``balda cpsl prepare`` writes the prepared folder of a warm-up recipe's run."""
    return out / (warmup.replace("/", "_") + "_prepared")


# ------------------------------------------------------------------------------------------ run
def run_recipe(
    name: str,
    roots: dict[str, Path],
    out: Path,
    scale: str,
    device: str,
    small_backbones: bool = False,
    max_batch: int | None = None,
    weights: dict[str, Path] | None = None,
) -> Result:
    """Train one recipe (after ``balda cpsl prepare`` for CPSL stage 1); never raises. The row says the
    batch it trained at where ``max_batch`` made it smaller than the recipe's, and the ImageNet file
    it loaded where ``weights`` had one for its backbone."""
    from balda.config import load_config, resolve_config
    from balda.engine.trainer import train

    res = Result(name)
    t0 = time.perf_counter()
    try:
        ov = overrides_for(name, roots, out, scale, device, small_backbones, max_batch, weights)
        cfg, own = load_config(resolve_config(name), ov), load_config(resolve_config(name)).data
        batch, own_batch = (cfg.data.batch_source, cfg.data.batch_target), (own.batch_source, own.batch_target)
        at = (
            ""
            if batch == own_batch
            else f" at batch {batch[0]}+{batch[1]} (the recipe's {own_batch[0]}+{own_batch[1]})"
        )
        res.ran = f"train {ITERS} iters{at} + final eval"
        real = (weights or {}).get(check_backbone(cfg, scale, small_backbones))
        if real is not None:
            res.ran += f", ImageNet weights {Path(real).name}"
        elif cfg.model.name == "deeplabv2":
            res.standin = STANDIN_VERSION
        shutil.rmtree(cfg.run_dir, ignore_errors=True)  # a fresh run: no resumed rounds or checkpoints
        if cfg.method.name == "cpsl":
            from balda.methods.cpsl.prepare import prepare_from_checkpoint

            warm = prerequisite(name)
            prep = Path(cfg.method.cpsl.prepared)
            shutil.rmtree(prep, ignore_errors=True)
            prepare_from_checkpoint(out / load_config(resolve_config(warm)).name, prep, device=device, progress=False)
            res.ran = f"cpsl prepare on {warm} + " + res.ran
        if cfg.method.name == "distill":
            res.ran += f", teacher {Path(cfg.method.distill.teacher).name}"
        metrics = train(cfg, progress=False)
        if cfg.active.enabled:
            manifest = json.loads((cfg.run_dir / "active" / "manifest.json").read_text())
            if len(manifest.get("rounds_done", [])) != 1 or not manifest.get("budget_used"):
                raise RuntimeError(f"expected one acquisition round with labels, the store says {manifest}")
            res.ran += f", 1 acquisition round ({manifest['budget_used']} px)"
        if not (cfg.run_dir / "final_metrics.json").is_file():
            raise RuntimeError(f"no final evaluation: {cfg.run_dir / 'final_metrics.json'} is missing")
        res.miou = float(metrics.score) if metrics is not None else None
        res.loss = loss_trend(cfg.run_dir / "metrics.jsonl")
        res.metric = "mPQ" if cfg.task == "panoptic" else "mIoU"
    except Exception as e:  # one broken recipe must not hide the others
        lines = str(e).strip().splitlines()
        res.status = f"{type(e).__name__}: {lines[0] if lines else ''}".strip()
        traceback.print_exc(file=sys.stderr)
    res.seconds = time.perf_counter() - t0
    return res


def loss_trend(metrics: Path) -> str | None:
    """``"<term> <first> -> <last>"``: a run's source loss term (the first ``loss/source.*`` key, else
    the first ``loss/*``) at its first and last logged training iteration, from ``metrics.jsonl``.
    "ok" only says the code path ran; this says whether the first steps already diverge (the check's
    random network with unit residual scales went from a source CE of 17 to 1300 in two steps)."""
    try:
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return None
    train = [r for r in rows if r.get("kind") == "train" and any(k.startswith("loss/") for k in r)]
    if not train:
        return None
    keys = sorted(k for k in train[0] if k.startswith("loss/"))
    key = next((k for k in keys if k.startswith("loss/source.")), keys[0])
    first, last = train[0].get(key), train[-1].get(key)
    if first is None or last is None:
        return None
    return f"{key[5:]} {float(first):.3g} -> {float(last):.3g}"


def _run_dir(name: str, out: Path) -> Path:
    from balda.config import load_config, resolve_config

    return out / load_config(resolve_config(name)).name


def _has_weights(name: str, out: Path) -> bool:
    """Whether a recipe's run still has the checkpoint a later recipe starts from (final.pt, else last.pt)."""
    run_dir = _run_dir(name, out)
    return (run_dir / "final.pt").is_file() or (run_dir / "last.pt").is_file()


# --------------------------------------------------------------------------------------- ledger
def load_ledger(path: Path, scale: str, small_backbones: bool) -> dict[str, Result]:
    """The rows of an earlier check of the same variant (``--resume``): recipe -> :class:`Result`.

    The ledger (``<markdown>.json``, written after every recipe) lets a check too long for one sitting
    (``--scale full`` on a CPU: hours) go on where it stopped, across machine restarts if it is kept
    in git. A ledger of another variant is a :class:`~balda.core.errors.ConfigError` naming the file."""
    from balda.core.errors import ConfigError

    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
        variant, rows = (doc["scale"], bool(doc["small_backbones"])), doc["rows"]
        results = {n: Result(**{"standin": _ledger_standin(n), **r}) for n, r in rows.items()}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"--resume: cannot read the recipe ledger {path}: {e}") from e
    if variant != (scale, small_backbones):
        raise ConfigError(
            f"--resume: the ledger {path} is of --scale {variant[0]}"
            f"{' --small-backbones' * variant[1]}, not of this check's --scale {scale}"
            f"{' --small-backbones' * small_backbones}; give another --markdown or drop --resume"
        )
    return results


def _ledger_standin(name: str) -> int | None:
    """The stand-in version of a ledger row that does not record it (rows from before versions were
    recorded): 1 for a DeepLabV2 recipe, none for the others."""
    from balda.config import load_config, resolve_config

    try:
        return 1 if load_config(resolve_config(name)).model.name == "deeplabv2" else None
    except Exception:  # noqa: BLE001 -- a recipe since removed: nothing to say
        return None


def _row(r: Result) -> dict:
    from dataclasses import asdict

    return {k: v for k, v in asdict(r).items() if k != "reused"}


def write_ledger(path: Path, results: dict[str, Result], scale: str, small_backbones: bool) -> None:
    """Write the rows so far, atomically (a killed check leaves the previous ledger whole)."""
    from balda.core.atomic import atomic_write_text

    doc = {"scale": scale, "small_backbones": small_backbones, "rows": {n: _row(r) for n, r in results.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")


def reusable(order: list[str], previous: dict[str, Result], out: Path) -> set[str]:
    """The recipes of ``order`` an earlier check passed that need not run again: every ok row, except a
    prerequisite whose dependant still runs and whose checkpoint is gone (it is trained again)."""
    reuse = {n for n in order if n in previous and previous[n].ok}
    for n in reversed(order):  # dependants before their prerequisites, so a re-run propagates back
        pre = prerequisite(n)
        if pre in reuse and n not in reuse and not _has_weights(pre, out):
            reuse.discard(pre)
    return reuse


def _drop_checkpoints(name: str, out: Path) -> None:
    """Delete the ``*.pt`` files of a recipe's run (and its CPSL prepared folder), keeping metrics and plots:
    a full-scale run writes three checkpoints of ~0.5 GB."""
    for p in _run_dir(name, out).glob("*.pt"):
        p.unlink(missing_ok=True)
    if name.endswith("_cpsl"):
        shutil.rmtree(prepared_dir(out, prerequisite(name)), ignore_errors=True)


def run_all(
    names: list[str],
    scale: str = "down",
    data: Path | None = None,
    out: Path | None = None,
    device: str = "auto",
    progress: bool = False,
    keep_checkpoints: bool = False,
    small_backbones: bool = False,
    ledger: Path | None = None,
    resume: bool = False,
    max_batch: int | None = None,
    weights: dict[str, Path] | None = None,
) -> tuple[list[Result], float]:
    """Generate the data, run ``names`` (with their prerequisites); returns the rows and the data seconds.

    Unless ``keep_checkpoints``, a run's checkpoints are deleted once no later recipe starts from them.
    ``ledger``: a JSON file the rows are written to after each recipe; with ``resume`` the recipes it
    holds as ok are not run again (:func:`reusable`), their rows kept as they were measured.
    ``max_batch``: cap of the source and target batches (a row says where it applied).
    ``weights``: backbone name -> ImageNet file, used instead of random init / stand-ins."""
    data = Path(data) if data is not None else ROOT / "data" / "recipes" / scale
    out = Path(out) if out is not None else ROOT / "runs" / "recipes" / scale
    t0 = time.perf_counter()
    roots = ensure_data(data, scale, progress)
    order = plan(names)
    from balda.config import load_config, resolve_config

    for name in order:  # the stand-in ImageNet weights the DeepLabV2 recipes load
        cfg = load_config(resolve_config(name))
        bb = check_backbone(cfg, scale, small_backbones)
        if cfg.model.name == "deeplabv2" and bb not in (weights or {}):
            ensure_standin_weights(standin_path(roots, bb), bb, roots["gta5"], cfg.data.mean, cfg.data.std)
    data_s = time.perf_counter() - t0
    previous = load_ledger(ledger, scale, small_backbones) if resume and ledger is not None else {}
    reuse = reusable(order, previous, out)
    # rows of recipes this check does not ask for stay in the ledger
    kept = {n: r for n, r in previous.items() if n not in order}
    at = f"{_commit()}, {_device_type(device)}"
    results: dict[str, Result] = {}
    for name in order:
        pre = prerequisite(name)
        if name in reuse:
            results[name] = previous[name]
            results[name].reused = True
        elif pre is not None and not results[pre].ok:
            results[name] = Result(name, "-", f"skipped: needs {pre}, which failed", at=at)
        else:
            results[name] = run_recipe(name, roots, out, scale, device, small_backbones, max_batch, weights)
            results[name].at = at
        r = results[name]
        how = "reused from the ledger" if name in reuse else f"{r.seconds:.1f} s"
        print(f"{name}: {r.status} ({how})", file=sys.stderr, flush=True)
        if ledger is not None and name not in reuse:
            write_ledger(ledger, {**kept, **results}, scale, small_backbones)
        if not keep_checkpoints:
            for done in (n for n in (pre, name) if n is not None):
                if all(m in results for m in order if prerequisite(m) == done):
                    _drop_checkpoints(done, out)
    return list(results.values()), data_s


# --------------------------------------------------------------------------------------- report
def _commit() -> str:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from run_all import _commit as commit

    return commit()


def _device_type(device: str) -> str:
    import torch

    return device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(
    results: list[Result],
    scale: str,
    device: str,
    data_s: float,
    small_backbones: bool = False,
    max_batch: int | None = None,
    weights: dict[str, Path] | None = None,
) -> str:
    """The report: a header saying what ran where, then one row per recipe."""
    import torch

    small = small_backbones and scale == "full"
    shapes = ", ".join(f"{k} {h}x{w}" for k, (h, w) in SHAPES[scale].items())
    n_ok = sum(r.ok for r in results)
    dev = _device_type(device)
    reused = sum(r.reused for r in results)
    lines = [
        "# Recipe check",
        "",
        f"`python benchmarks/recipes.py --scale {scale}{' --small-backbones' * small} --device {device}"
        f"{'' if max_batch is None else f' --max-batch {max_batch}'}"
        f"{''.join(f' --weights {k}={Path(v).name}' for k, v in sorted((weights or {}).items()))}`: "
        f"{len(results)} of the {len(recipe_names())} shipped real-data recipes, "
        f"{ITERS} iterations each, on procedural data (H x W: {shapes}; GTA5 quirks on), "
        + (f"ImageNet weights for {', '.join(sorted(weights))}, else " if weights else "")
        + f"random init (DeepLabV2: stand-in ImageNet weights v{STANDIN_VERSION}, random with the source's "
        "BatchNorm statistics and residual branches scaled by 1/sqrt(blocks)), with the "
        f"final evaluation (2 images). Scale `{scale}`"
        + (
            ": crops 64 px high, resizes 128 px wide, ResNet-18 / MiT-B0 backbones."
            if scale == "down"
            else ": the recipes' real crops and resizes, ResNet-18 / MiT-B0 backbones."
            if small
            else ": the recipes' real crops, resizes and backbones."
        ),
        "",
        f"Commit {_commit()}, {dev} ({platform.machine()}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}), torch {torch.__version__}; "
        f"data and stand-in weights generated or reused in {data_s:.1f} s. "
        f"**{n_ok}/{len(results)} ok**, "
        f"{sum(r.seconds for r in results):.0f} s in all"
        + (f"; {reused} rows were measured earlier (`--resume`), at the commit they name." if reused else "."),
        "",
        "| recipe | what ran | result | loss, first -> last step | final score | seconds | run at |",
        "|---|---|---|---|---:|---:|---|",
    ]
    for r in results:
        miou = "-" if r.miou is None else f"{100 * r.miou:.1f} {r.metric}"
        ran = r.ran + (f", stand-in weights v{r.standin}" if r.standin not in (None, STANDIN_VERSION) else "")
        loss = _cell(r.loss) if r.loss else "-"
        lines.append(
            f"| {r.recipe} | {_cell(ran)} | {_cell(r.status)} | {loss} | {miou} | {r.seconds:.1f} | {_cell(r.at)} |"
        )
    return "\n".join(lines) + "\n"


def parse_weights(items: list[str]) -> dict[str, Path]:
    """``--weights BACKBONE=PATH ...`` as a dict; an unknown backbone or a missing file is a
    :class:`~balda.core.errors.ConfigError` naming the option."""
    from balda.core.errors import ConfigError
    from balda.models.deeplabv2 import RESNETS
    from balda.models.mit import MIT_SETTINGS

    known = sorted((*RESNETS, *MIT_SETTINGS))
    out: dict[str, Path] = {}
    for item in items:
        key, sep, path = item.partition("=")
        if not sep or not path:
            raise ConfigError(f"--weights {item!r}: expected BACKBONE=PATH, e.g. resnet101=weights/r101.pth")
        if key not in known:
            raise ConfigError(f"--weights {item!r}: unknown backbone {key!r}; expected one of {', '.join(known)}")
        if not Path(path).is_file():
            raise ConfigError(f"--weights {item!r}: no such file {path}")
        out[key] = Path(path).resolve()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--recipes", nargs="+", metavar="NAME", help="a subset (default: every gta2cs/ and syn2cs/ recipe)")
    p.add_argument(
        "--scale",
        choices=("down", "full"),
        default="down",
        help="down: the same code path down-scaled (seconds per recipe on a CPU); full: the real crops, "
        "resizes and backbones (meant for a GPU, --device cuda)",
    )
    p.add_argument("--data", type=Path, help="cache of the generated data (default: data/recipes/<scale>)")
    p.add_argument("--out", type=Path, help="folder of the runs (default: runs/recipes/<scale>)")
    p.add_argument("--device", default="auto", help="train.device of every run: auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--markdown", type=Path, default=ROOT / "benchmarks" / "results" / "recipes.md")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep every run's *.pt files")
    p.add_argument(
        "--small-backbones",
        action="store_true",
        help="with --scale full: ResNet-18 / MiT-B0 instead of the recipes' backbones (the real-shaped data "
        "path on a CPU)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="go on from the ledger next to --markdown (<markdown>.json, written after each recipe): the "
        "recipes it holds as ok are not run again. For checks longer than one sitting (--scale full on a CPU)",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        metavar="N",
        help="cap the source and target batches at N (each row says where it applied): a CPU machine without "
        "the memory of the recipe's batch (ResNet-101 at 640x1280, batch 2+2, needs over 20 GB on a CPU)",
    )
    p.add_argument(
        "--weights",
        nargs="+",
        metavar="BACKBONE=PATH",
        default=[],
        help="real ImageNet files instead of random init, by the backbone the check runs, e.g. "
        "resnet101=weights/resnet101_imagenet.pth mit_b5=weights/mit_b5.pth",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="the trainer's log (INFO)")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    from balda.core.errors import BaldaError
    from balda.engine.trainer import resolve_device

    try:
        weights = parse_weights(args.weights)
        if args.scale == "full" and not args.small_backbones and resolve_device(args.device).type == "cpu":
            print(
                "warning: --scale full on a CPU is slow (ResNet-101 / MiT-B5 on 512x1024 crops, minutes per "
                "recipe); it is meant for a GPU machine (--device cuda)",
                file=sys.stderr,
            )
        results, data_s = run_all(
            args.recipes or recipe_names(),
            args.scale,
            args.data,
            args.out,
            args.device,
            keep_checkpoints=args.keep_checkpoints,
            small_backbones=args.small_backbones,
            ledger=args.markdown.with_suffix(".json"),
            resume=args.resume,
            max_batch=args.max_batch,
            weights=weights,
        )
    except BaldaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = markdown(results, args.scale, args.device, data_s, args.small_backbones, args.max_batch, weights)
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(text)
    print(text)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
