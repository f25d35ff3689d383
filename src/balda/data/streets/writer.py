"""Writing the street benchmark to disk in the real formats (GTA5- or SYNTHIA-format source,
Cityscapes-format target), its ``meta.json`` and sample pages, and checking whether a folder is complete."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from balda.core.errors import ConfigError, DataError
from balda.core.progress import track
from balda.data.io import read_synthia_label
from balda.data.labels import (
    CITYSCAPES_LUT,
    CLASS_NAMES,
    NUM_CLASSES,
    PALETTE,
    TRAINID_TO_LABELID_LUT,
    TRAINID_TO_SYNTHIA,
    colorize,
)

from .instances import cityscapes_instance_ids
from .render import image_rng, render_scene
from .style import DEFAULT_SHIFT, _canonical_profile

GENERATOR = "balda.streets"

#: Bumped whenever the rendering or the files change, so stale folders are regenerated. Version 3
#: adds instance ids (Cityscapes ``*_gtFine_instanceIds.png``, the G channel of SYNTHIA-format
#: labels) and keeps the images and labels of version 2 byte for byte.
GENERATOR_VERSION = 3
#: Made-up city names of the target splits (Cityscapes keeps its val cities apart from train).
TARGET_CITIES = {"train": ("lindenau", "oakport"), "val": ("rivermark",)}
#: On-disk formats of the source domain.
SOURCE_FORMATS = ("gta5", "synthia")
#: Widest tile of a sample page (larger images are shown downscaled).
_PAGE_TILE_W = 512


def _gta_palette() -> list[int]:
    """256-entry palette of the GTA5 label PNGs: Cityscapes colours indexed by labelId."""
    pal = np.zeros((256, 3), np.uint8)
    for c in range(NUM_CLASSES):
        pal[TRAINID_TO_LABELID_LUT[c]] = PALETTE[c]
    return pal.reshape(-1).tolist()


_GTA_PALETTE = _gta_palette()
#: trainId -> SYNTHIA class id (255, unlabelled -> 0, void), as the 16-bit values of the label files.
_TRAINID_TO_SYNTHIA_LUT = np.zeros(256, np.uint16)
_TRAINID_TO_SYNTHIA_LUT[:NUM_CLASSES] = TRAINID_TO_SYNTHIA


def _size_pair(size, key: str) -> tuple[int, int]:
    """``size`` as ``(H, W)`` of positive ints; a ConfigError naming ``key`` otherwise."""
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ConfigError(f"streets {key}: expected (H, W), got {size!r}") from None
    if h < 1 or w < 1:
        raise ConfigError(f"streets {key}: expected positive (H, W), got {size!r}")
    return h, w


def _odd_size(size: tuple[int, int]) -> tuple[int, int]:
    """The size of a quirk image rendered at an odd size: two rows fewer (GTA5's 1914x1050 among 1914x1052)."""
    return size[0] - 2, size[1]


def _shrunk_label_size(size: tuple[int, int]) -> tuple[int, int]:
    """The size of a quirk label smaller than its image: ~0.5% (at least 2 px) narrower, same aspect ratio."""
    h, w = size
    w2 = w - max(2, round(w * 0.005))
    return max(1, round(h * w2 / w)), w2


def _quirk_plan(seed: int, n_source: int) -> dict[int, str]:
    """Source images with a quirk, deterministic from ``seed``: index -> ``'label_size'`` (one image, its
    label smaller than the image) or ``'odd_size'`` (two images rendered two rows shorter); with fewer
    than 3 source images, the label quirk first."""
    pick = np.random.default_rng(np.random.SeedSequence([int(seed), 1052])).permutation(int(n_source))[:3]
    return {int(i): "label_size" if k == 0 else "odd_size" for k, i in enumerate(pick)}


def _target_stem(split: str, index: int) -> tuple[str, str]:
    cities = TARGET_CITIES[split]
    city = cities[index % len(cities)]
    return city, f"{city}_{index // len(cities):06d}_000019"


def _source_dirs(source_format: str) -> tuple[str, str]:
    """Image and label folders of the source, relative to the benchmark folder."""
    if source_format == "synthia":
        return "source/RAND_CITYSCAPES/RGB", "source/RAND_CITYSCAPES/GT/LABELS"
    return "source/images", "source/labels"


def _relpaths(domain_key: str, index: int, source_format: str = "gta5") -> tuple[str, str]:
    if domain_key == "source":
        img_dir, lab_dir = _source_dirs(source_format)
        name = f"{index:07d}.png" if source_format == "synthia" else f"{index:05d}.png"
        return f"{img_dir}/{name}", f"{lab_dir}/{name}"
    split = domain_key.split("_", 1)[1]
    city, stem = _target_stem(split, index)
    return (
        f"target/leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png",
        f"target/gtFine/{split}/{city}/{stem}_gtFine_labelIds.png",
    )


def _instance_relpath(label_relpath: str) -> str:
    """The ``*_gtFine_instanceIds.png`` next to a target ``*_gtFine_labelIds.png``."""
    return label_relpath[: -len("_labelIds.png")] + "_instanceIds.png"


def _write_png16(path: str, arr: np.ndarray, what: str) -> None:
    ok, buf = cv2.imencode(".png", arr.astype(np.uint16), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise DataError(f"cannot encode {what} {path}", path)
    Path(path).write_bytes(buf.tobytes())


def _write_synthia_label(path: str, lab: np.ndarray, ins: np.ndarray) -> None:
    """A 16-bit 3-channel SYNTHIA label PNG (OpenCV, BGR): the class id in R (index 2), the instance
    id in G (index 1; 0 = no instance), 0 in B."""
    if int(ins.max(initial=0)) > 65535:
        raise DataError(f"SYNTHIA label {path}: {int(ins.max())} instances do not fit the 16-bit G channel", path)
    bgr = np.zeros((*lab.shape, 3), np.uint16)
    bgr[..., 2] = _TRAINID_TO_SYNTHIA_LUT[lab]
    bgr[..., 1] = ins
    _write_png16(path, bgr, "SYNTHIA label")


def _render_job(job: tuple) -> tuple[str, int, np.ndarray]:
    out, domain_key, index, seed, size, shift, profile, source_format, quirk = job
    domain = "source" if domain_key == "source" else "target"
    render_size = _odd_size(size) if quirk == "odd_size" else size
    img, lab, ins = render_scene(
        image_rng(seed, domain_key, index), domain, render_size, shift, profile, with_instances=True
    )
    if quirk == "label_size":
        h, w = _shrunk_label_size(size)
        lab = cv2.resize(lab, (w, h), interpolation=cv2.INTER_NEAREST)
    ip, lp = _relpaths(domain_key, index, source_format)
    Image.fromarray(img).save(os.path.join(out, ip), compress_level=1)
    if domain == "source" and source_format == "synthia":
        _write_synthia_label(os.path.join(out, lp), lab, ins)
    elif domain == "source":
        im = Image.fromarray(TRAINID_TO_LABELID_LUT[lab])
        im.putpalette(_GTA_PALETTE)
        im.save(os.path.join(out, lp))
    else:
        Image.fromarray(TRAINID_TO_LABELID_LUT[lab]).save(os.path.join(out, lp))
        inst_path = os.path.join(out, _instance_relpath(lp))
        _write_png16(inst_path, cityscapes_instance_ids(lab, ins), "Cityscapes instanceIds")
    counts = np.bincount(np.minimum(lab, NUM_CLASSES).ravel(), minlength=NUM_CLASSES + 1)
    return domain_key, index, counts


def _params(
    size,
    n_source,
    n_target_train,
    n_target_val,
    seed,
    shift,
    profile,
    source_size=None,
    target_size=None,
    source_format="gta5",
    quirks=False,
) -> dict:
    """The parameters recorded in ``meta.json``. Keys of the defaults (one size, GTA5 format, no quirks)
    are those of earlier folders, so these stay reusable: ``size`` when both domains share it, else
    ``source_size`` and ``target_size``; ``source_format`` and ``quirks`` only when not the default."""
    src = _size_pair(size if source_size is None else source_size, "source_size")
    tgt = _size_pair(size if target_size is None else target_size, "target_size")
    if source_format not in SOURCE_FORMATS:
        raise ConfigError(f"streets source_format: expected one of {list(SOURCE_FORMATS)}, got {source_format!r}")
    if quirks and source_format != "gta5":
        raise ConfigError(
            "streets quirks: the quirks are those of the GTA5 download; source_format "
            f"{source_format!r} has none (its loader rejects a label of another size)"
        )
    if quirks and (src[0] < 8 or src[1] < 8):
        raise ConfigError(f"streets quirks: the source size must be at least 8x8, got {src[0]}x{src[1]}")
    p = {
        "n_source": int(n_source),
        "n_target_train": int(n_target_train),
        "n_target_val": int(n_target_val),
        "seed": int(seed),
        "shift": float(shift),
        "profile": _canonical_profile(profile),
        "version": GENERATOR_VERSION,
    }
    if src == tgt:
        p["size"] = list(src)
    else:
        p["source_size"], p["target_size"] = list(src), list(tgt)
    if source_format != "gta5":
        p["source_format"] = source_format
    if quirks:
        p["quirks"] = True
    return p


def _domain_sizes(params: dict) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(source (H, W), target (H, W))`` of a params dict of :func:`_params`."""
    src = params.get("source_size", params.get("size"))
    tgt = params.get("target_size", params.get("size"))
    return (int(src[0]), int(src[1])), (int(tgt[0]), int(tgt[1]))


def load_streets_meta(out: str | os.PathLike) -> dict | None:
    """The ``meta.json`` of a generated folder, or None."""
    p = Path(out) / "meta.json"
    try:
        meta = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("generator") == GENERATOR else None


def streets_exists(
    out: str | os.PathLike,
    size=(128, 256),
    n_source: int = 600,
    n_target_train: int = 300,
    n_target_val: int = 100,
    seed: int = 0,
    shift: float = DEFAULT_SHIFT,
    profile: str = "cityscapes",
    source_size=None,
    target_size=None,
    source_format: str = "gta5",
    quirks: bool = False,
    **_ignored,
) -> bool:
    """Whether ``out`` holds a *complete* benchmark generated with exactly these parameters
    (meta.json says so and the expected number of image and label files is present)."""
    meta = load_streets_meta(out)
    if meta is None or not meta.get("complete"):
        return False
    if meta.get("params") != _params(
        size,
        n_source,
        n_target_train,
        n_target_val,
        seed,
        shift,
        profile,
        source_size,
        target_size,
        source_format,
        quirks,
    ):
        return False
    out = Path(out)

    def n_png(d: Path, pattern: str = "*.png") -> int:
        return sum(1 for _ in d.rglob(pattern)) if d.is_dir() else 0

    img_dir, lab_dir = _source_dirs(source_format)
    return (
        n_png(out / img_dir) == n_source
        and n_png(out / lab_dir) == n_source
        and n_png(out / "target" / "leftImg8bit" / "train") == n_target_train
        and n_png(out / "target" / "gtFine" / "train", "*_labelIds.png") == n_target_train
        and n_png(out / "target" / "leftImg8bit" / "val") == n_target_val
        and n_png(out / "target" / "gtFine" / "val", "*_labelIds.png") == n_target_val
    )


def _sample_page(out: Path, domain_key: str, n: int, path: Path, source_format: str = "gta5") -> None:
    """Tile ``n`` images of a domain with their colourised labels (image | label per row). Every tile
    has the size of the first image, at most :data:`_PAGE_TILE_W` wide (quirk sizes are resized to it)."""
    rows, tile = [], None
    for i in range(n):
        ip, lp = _relpaths(domain_key, i, source_format)
        img = np.asarray(Image.open(out / ip).convert("RGB"))
        if domain_key == "source" and source_format == "synthia":
            lab = read_synthia_label(out / lp)
        else:
            lab = CITYSCAPES_LUT[np.asarray(Image.open(out / lp))]
        if tile is None:
            s = min(1.0, _PAGE_TILE_W / img.shape[1])
            tile = (max(1, round(img.shape[1] * s)), max(1, round(img.shape[0] * s)))  # (W, H)
        if img.shape[1::-1] != tile:
            img = cv2.resize(img, tile, interpolation=cv2.INTER_AREA)
        if lab.shape[::-1] != tile:
            lab = cv2.resize(lab, tile, interpolation=cv2.INTER_NEAREST)
        sep = np.full((img.shape[0], 4, 3), 255, np.uint8)
        rows.append(np.concatenate([img, sep, colorize(lab)], 1))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    if rows:
        Image.fromarray(np.concatenate(rows[:-1], 0)).save(path)


def generate_streets(
    out: str | os.PathLike,
    size: tuple[int, int] = (128, 256),
    n_source: int = 600,
    n_target_train: int = 300,
    n_target_val: int = 100,
    seed: int = 0,
    shift: float = DEFAULT_SHIFT,
    profile: str = "cityscapes",
    progress: bool = True,
    workers: int = 2,
    source_size: tuple[int, int] | None = None,
    target_size: tuple[int, int] | None = None,
    source_format: str = "gta5",
    quirks: bool = False,
) -> dict:
    """Write the two-domain benchmark under ``out`` and return its summary.

    Layout: the source in ``source/{images,labels}`` (``source_format='gta5'``: ``NNNNN.png`` RGB
    images and palette PNGs of Cityscapes labelIds; no instances, as in GTA5) or
    ``source/RAND_CITYSCAPES/{RGB,GT/LABELS}`` (``'synthia'``: ``NNNNNNN.png`` RGB images and 16-bit
    3-channel label PNGs written with OpenCV, the SYNTHIA class id in R, the instance id in G (1..N
    per image, 0 = none), 0 in B; unlabelled pixels are class 0, void), the target in
    ``target/{leftImg8bit,gtFine}/{train,val}`` (Cityscapes format: ``_gtFine_labelIds.png`` and the
    16-bit ``_gtFine_instanceIds.png``, ``labelId * 1000 + k`` on instance pixels with ``k = 0..n-1``
    per class, the labelId elsewhere), ``samples_source.png`` /
    ``samples_target.png`` (4 images with their colourised labels) and ``meta.json`` (params + summary;
    written last, so a folder is reused by :func:`streets_exists` only when complete). If ``out``
    already holds a complete benchmark with the same parameters, nothing is regenerated. Output is
    byte-identical for a seed, whatever ``workers``.

    ``size`` (H, W) is the size of both domains unless ``source_size`` / ``target_size`` is given
    (e.g. GTA5's 1052x1914, SYNTHIA's 760x1280, Cityscapes' 1024x2048). ``quirks=True`` (GTA5 format
    only) reproduces the irregularities of the real GTA5 download, on source images chosen from
    ``seed``: two images (and their labels) are rendered two rows shorter (1914x1050 among 1914x1052),
    and one label is smaller than its image by ~0.5% (at least 2 px) in width, with the same aspect
    ratio within 2% (rendered at the image size, then resized by nearest), which the GTA5 loader
    resizes back with a warning. The summary lists them under ``quirks``.

    The summary holds ``class_frequencies`` ({domain: {class: fraction of labelled pixels}}),
    ``class_presence`` ({domain: {class: fraction of images containing it}}), ``ignore_fraction``,
    ``params``, ``paths`` (relative to ``out``), ``quirks`` (when asked) and, in the returned dict only,
    ``root`` (``out``), ``reused`` and ``seconds``. Bad sizes, an unknown ``source_format`` or quirks
    with the SYNTHIA format raise :class:`~balda.core.errors.ConfigError`.
    """
    t0 = time.perf_counter()
    out = Path(out)
    args = dict(
        size=size,
        n_source=n_source,
        n_target_train=n_target_train,
        n_target_val=n_target_val,
        seed=seed,
        shift=shift,
        profile=profile,
        source_size=source_size,
        target_size=target_size,
        source_format=source_format,
        quirks=bool(quirks),
    )
    params = _params(**args)
    if streets_exists(out, **args):
        meta = load_streets_meta(out)
        return {**meta["summary"], "root": str(out), "reused": True, "seconds": time.perf_counter() - t0}
    old = load_streets_meta(out)
    for sub in ("source", "target"):
        d = out / sub
        if d.exists() and any(d.iterdir()):
            if old is None:
                raise FileExistsError(
                    f"{d} exists and is not a streets benchmark (no meta.json); remove it or choose another --out"
                )
            shutil.rmtree(d)
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").write_text(
        json.dumps({"generator": GENERATOR, "complete": False, "params": params}, indent=1, sort_keys=True)
    )
    counts = {"source": n_source, "target_train": n_target_train, "target_val": n_target_val}
    src_size, tgt_size = _domain_sizes(params)
    plan = _quirk_plan(seed, n_source) if quirks else {}
    jobs = []
    for key, n in counts.items():
        for i in range(n):
            for p in _relpaths(key, i, source_format):
                (out / p).parent.mkdir(parents=True, exist_ok=True)
            quirk = plan.get(i) if key == "source" else None
            jobs.append(
                (
                    str(out),
                    key,
                    i,
                    params["seed"],
                    src_size if key == "source" else tgt_size,
                    params["shift"],
                    params["profile"],
                    source_format,
                    quirk,
                )
            )
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
            consume(
                track(pool.imap_unordered(_render_job, jobs, chunksize=chunk), len(jobs), "rendering streets", progress)
            )
    else:
        consume(track(map(_render_job, jobs), len(jobs), "rendering streets", progress))
    _sample_page(out, "source", min(4, n_source), out / "samples_source.png", source_format)
    _sample_page(out, "target_train", min(4, n_target_train) or 0, out / "samples_target.png")

    freqs, presence, ignore = {}, {}, {}
    for key in counts:
        c = totals[key]
        lab_px = max(1, int(c[:NUM_CLASSES].sum()))
        freqs[key] = {name: round(float(c[i]) / lab_px, 6) for i, name in enumerate(CLASS_NAMES)}
        presence[key] = {
            name: round(float(present[key][i]) / max(1, counts[key]), 4) for i, name in enumerate(CLASS_NAMES)
        }
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
    if quirks:
        summary["quirks"] = {
            kind: [_relpaths("source", i)[0] for i in sorted(plan) if plan[i] == kind]
            for kind in ("odd_size", "label_size")
        }
    (out / "meta.json").write_text(
        json.dumps(
            {"generator": GENERATOR, "complete": True, "params": params, "summary": summary}, indent=1, sort_keys=True
        )
    )
    return {**summary, "root": str(out), "reused": False, "seconds": time.perf_counter() - t0}
