"""Writing the street benchmark to disk in the real formats (GTA5-format source, Cityscapes-format
target), its ``meta.json`` and sample pages, and checking whether a folder is complete."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from balda.core.progress import track
from balda.data.labels import CITYSCAPES_LUT, CLASS_NAMES, NUM_CLASSES, PALETTE, TRAINID_TO_LABELID_LUT, colorize

from .render import image_rng, render_scene
from .style import DEFAULT_SHIFT, _canonical_profile

GENERATOR = "balda.streets"

#: Bumped whenever the rendering changes, so stale folders are regenerated.
GENERATOR_VERSION = 2
#: Made-up city names of the target splits (Cityscapes keeps its val cities apart from train).
TARGET_CITIES = {"train": ("lindenau", "oakport"), "val": ("rivermark",)}

def _gta_palette() -> list[int]:
    """256-entry palette of the GTA5 label PNGs: Cityscapes colours indexed by labelId."""
    pal = np.zeros((256, 3), np.uint8)
    for c in range(NUM_CLASSES):
        pal[TRAINID_TO_LABELID_LUT[c]] = PALETTE[c]
    return pal.reshape(-1).tolist()


_GTA_PALETTE = _gta_palette()


def _target_stem(split: str, index: int) -> tuple[str, str]:
    cities = TARGET_CITIES[split]
    city = cities[index % len(cities)]
    return city, f"{city}_{index // len(cities):06d}_000019"


def _relpaths(domain_key: str, index: int) -> tuple[str, str]:
    if domain_key == "source":
        return f"source/images/{index:05d}.png", f"source/labels/{index:05d}.png"
    split = domain_key.split("_", 1)[1]
    city, stem = _target_stem(split, index)
    return (f"target/leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png",
            f"target/gtFine/{split}/{city}/{stem}_gtFine_labelIds.png")


def _render_job(job: tuple) -> tuple[str, int, np.ndarray]:
    out, domain_key, index, seed, size, shift, profile = job
    domain = "source" if domain_key == "source" else "target"
    img, lab = render_scene(image_rng(seed, domain_key, index), domain, size, shift, profile)
    ip, lp = _relpaths(domain_key, index)
    ids = TRAINID_TO_LABELID_LUT[lab]
    Image.fromarray(img).save(os.path.join(out, ip), compress_level=1)
    if domain == "source":
        im = Image.fromarray(ids)
        im.putpalette(_GTA_PALETTE)
        im.save(os.path.join(out, lp))
    else:
        Image.fromarray(ids).save(os.path.join(out, lp))
    counts = np.bincount(np.minimum(lab, NUM_CLASSES).ravel(), minlength=NUM_CLASSES + 1)
    return domain_key, index, counts


def _params(size, n_source, n_target_train, n_target_val, seed, shift, profile) -> dict:
    return {"size": [int(size[0]), int(size[1])], "n_source": int(n_source), "n_target_train": int(n_target_train),
            "n_target_val": int(n_target_val), "seed": int(seed), "shift": float(shift),
            "profile": _canonical_profile(profile), "version": GENERATOR_VERSION}


def load_streets_meta(out: str | os.PathLike) -> dict | None:
    """The ``meta.json`` of a generated folder, or None."""
    p = Path(out) / "meta.json"
    try:
        meta = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("generator") == GENERATOR else None


def streets_exists(out: str | os.PathLike, size=(128, 256), n_source: int = 600, n_target_train: int = 300,
                   n_target_val: int = 100, seed: int = 0, shift: float = DEFAULT_SHIFT, profile: str = "cityscapes",
                   **_ignored) -> bool:
    """Whether ``out`` holds a *complete* benchmark generated with exactly these parameters
    (meta.json says so and the expected number of image and label files is present)."""
    meta = load_streets_meta(out)
    if meta is None or not meta.get("complete"):
        return False
    if meta.get("params") != _params(size, n_source, n_target_train, n_target_val, seed, shift, profile):
        return False
    out = Path(out)

    def n_png(d: Path) -> int:
        return sum(1 for _ in d.rglob("*.png")) if d.is_dir() else 0

    return (n_png(out / "source" / "images") == n_source and n_png(out / "source" / "labels") == n_source
            and n_png(out / "target" / "leftImg8bit" / "train") == n_target_train
            and n_png(out / "target" / "gtFine" / "train") == n_target_train
            and n_png(out / "target" / "leftImg8bit" / "val") == n_target_val
            and n_png(out / "target" / "gtFine" / "val") == n_target_val)


def _sample_page(out: Path, domain_key: str, n: int, path: Path) -> None:
    """Tile ``n`` images of a domain with their colourised labels (image | label per row)."""
    rows = []
    for i in range(n):
        ip, lp = _relpaths(domain_key, i)
        img = np.asarray(Image.open(out / ip).convert("RGB"))
        lab = CITYSCAPES_LUT[np.asarray(Image.open(out / lp))]
        sep = np.full((img.shape[0], 4, 3), 255, np.uint8)
        rows.append(np.concatenate([img, sep, colorize(lab)], 1))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    if rows:
        Image.fromarray(np.concatenate(rows[:-1], 0)).save(path)


def generate_streets(out: str | os.PathLike, size: tuple[int, int] = (128, 256), n_source: int = 600,
                     n_target_train: int = 300, n_target_val: int = 100, seed: int = 0, shift: float = DEFAULT_SHIFT,
                     profile: str = "cityscapes", progress: bool = True, workers: int = 2) -> dict:
    """Write the two-domain benchmark under ``out`` and return its summary.

    Layout: ``source/{images,labels}`` (GTA5 format) and ``target/{leftImg8bit,gtFine}/{train,val}``
    (Cityscapes format), ``samples_source.png`` / ``samples_target.png`` (4 images with their
    colourised labels) and ``meta.json`` (params + summary; written last, so a folder is reused by
    :func:`streets_exists` only when complete). If ``out`` already holds a complete benchmark with the
    same parameters, nothing is regenerated. Output is byte-identical for a seed, whatever ``workers``.

    The summary holds ``class_frequencies`` ({domain: {class: fraction of labelled pixels}}),
    ``class_presence`` ({domain: {class: fraction of images containing it}}), ``ignore_fraction``,
    ``params``, ``paths`` (relative to ``out``) and, in the returned dict only, ``root`` (``out``),
    ``reused`` and ``seconds``.
    """
    t0 = time.perf_counter()
    out = Path(out)
    params = _params(size, n_source, n_target_train, n_target_val, seed, shift, profile)
    if streets_exists(out, **{k: v for k, v in params.items() if k != "version"}):
        meta = load_streets_meta(out)
        return {**meta["summary"], "root": str(out), "reused": True, "seconds": time.perf_counter() - t0}
    old = load_streets_meta(out)
    for sub in ("source", "target"):
        d = out / sub
        if d.exists() and any(d.iterdir()):
            if old is None:
                raise FileExistsError(f"{d} exists and is not a streets benchmark (no meta.json); "
                                      f"remove it or choose another --out")
            shutil.rmtree(d)
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").write_text(json.dumps({"generator": GENERATOR, "complete": False, "params": params},
                                              indent=1, sort_keys=True))
    counts = {"source": n_source, "target_train": n_target_train, "target_val": n_target_val}
    jobs = []
    for key, n in counts.items():
        for i in range(n):
            for p in _relpaths(key, i):
                (out / p).parent.mkdir(parents=True, exist_ok=True)
            jobs.append((str(out), key, i, params["seed"], tuple(params["size"]), params["shift"], params["profile"]))
    totals = {k: np.zeros(NUM_CLASSES + 1, np.int64) for k in counts}
    present = {k: np.zeros(NUM_CLASSES, np.int64) for k in counts}

    def consume(results):
        for key, _, c in results:
            totals[key] += c
            present[key] += c[:NUM_CLASSES] > 0

    workers = max(1, min(int(workers), os.cpu_count() or 1, max(1, len(jobs))))
    chunk = max(1, min(16, len(jobs) // (4 * workers) or 1))
    if workers > 1 and len(jobs) > 8:
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        with ctx.Pool(workers) as pool:
            consume(track(pool.imap_unordered(_render_job, jobs, chunksize=chunk), len(jobs), "rendering streets", progress))
    else:
        consume(track(map(_render_job, jobs), len(jobs), "rendering streets", progress))
    _sample_page(out, "source", min(4, n_source), out / "samples_source.png")
    _sample_page(out, "target_train", min(4, n_target_train) or 0, out / "samples_target.png")

    freqs, presence, ignore = {}, {}, {}
    for key in counts:
        c = totals[key]
        lab_px = max(1, int(c[:NUM_CLASSES].sum()))
        freqs[key] = {name: round(float(c[i]) / lab_px, 6) for i, name in enumerate(CLASS_NAMES)}
        presence[key] = {name: round(float(present[key][i]) / max(1, counts[key]), 4)
                         for i, name in enumerate(CLASS_NAMES)}
        ignore[key] = round(float(c[NUM_CLASSES]) / max(1, int(c.sum())), 6)
    summary = {
        "params": params,
        # relative to the folder, so meta.json does not depend on where the folder lives
        "paths": {"source": "source", "target": "target", "samples": ["samples_source.png", "samples_target.png"]},
        "num_images": counts,
        "class_frequencies": freqs,
        "class_presence": presence,
        "ignore_fraction": ignore,
        "target_cities": {k: list(v) for k, v in TARGET_CITIES.items()},
    }
    (out / "meta.json").write_text(json.dumps({"generator": GENERATOR, "complete": True, "params": params,
                                               "summary": summary}, indent=1, sort_keys=True))
    return {**summary, "root": str(out), "reused": False, "seconds": time.perf_counter() - t0}
