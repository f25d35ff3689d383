"""Tests of the procedural two-domain street benchmark (balda.data.streets)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from balda.data import streets
from balda.data.labels import CITYSCAPES_LUT, CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, TRAINID_TO_LABELID
from balda.data.streets import domain_priors, domain_style, generate_streets, image_rng, render_scene, streets_exists

SMALL = dict(size=(64, 128), n_source=5, n_target_train=4, n_target_val=3, seed=7)
RARE = ("wall", "fence", "traffic light", "traffic sign", "rider", "truck", "bus", "train", "motorcycle", "bicycle")
N_SAMPLE = 40  # images per domain for the statistics tests


def _counts(domain_key: str, n: int, seed: int = 0, shift: float = 1.0, size=(128, 256)):
    dom = "source" if domain_key == "source" else "target"
    tot = np.zeros(NUM_CLASSES + 1, np.int64)
    present = np.zeros(NUM_CLASSES, bool)
    means = []
    for i in range(n):
        img, lab = render_scene(image_rng(seed, domain_key, i), dom, size, shift=shift)
        c = np.bincount(np.minimum(lab, NUM_CLASSES).ravel(), minlength=NUM_CLASSES + 1)
        tot += c
        present |= c[:NUM_CLASSES] > 0
        means.append(img.reshape(-1, 3).mean(0))
    freq = tot[:NUM_CLASSES] / tot[:NUM_CLASSES].sum()
    return freq, present, np.mean(means, 0)


@pytest.fixture(scope="module")
def sample():
    """Class frequencies of N_SAMPLE default-size images per domain."""
    return {key: _counts(key, N_SAMPLE) for key in ("source", "target_train")}


@pytest.fixture(scope="module")
def small_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("streets") / "bench"
    summary = generate_streets(out, progress=False, workers=2, **SMALL)
    return out, summary


# ------------------------------------------------------------------------------------------ render
def test_render_shapes_and_label_values():
    for dom in ("source", "target"):
        img, lab = render_scene(np.random.default_rng(0), dom, (64, 128))
        assert img.shape == (64, 128, 3) and img.dtype == np.uint8
        assert lab.shape == (64, 128) and lab.dtype == np.uint8
        assert set(np.unique(lab)) <= set(range(NUM_CLASSES)) | {IGNORE_INDEX}


def test_render_is_deterministic_and_seed_dependent():
    a = render_scene(image_rng(3, "source", 5), "source")
    b = render_scene(image_rng(3, "source", 5), "source")
    c = render_scene(image_rng(4, "source", 5), "source")
    d = render_scene(image_rng(3, "source", 6), "source")
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    for other in (c, d):
        assert not np.array_equal(a[0], other[0])
        assert not np.array_equal(a[1], other[1])


def test_unlabelled_pixels_exist_in_target():
    # the ego-vehicle bonnet at the bottom of target images is unlabelled, like Cityscapes
    _, lab = render_scene(image_rng(0, "target_train", 0), "target")
    assert (lab[-1] == IGNORE_INDEX).mean() > 0.9
    assert (lab == IGNORE_INDEX).mean() < 0.2


def test_bad_arguments():
    with pytest.raises(ValueError):
        render_scene(np.random.default_rng(0), "gta")
    with pytest.raises(ValueError):
        domain_priors("target", profile="nope")


# ----------------------------------------------------------------------------------- statistics
def test_class_frequencies_within_bounds(sample):
    fs, ps, _ = sample["source"]
    ft, pt, _ = sample["target_train"]
    assert (ps | pt).all(), [n for n, p in zip(CLASS_NAMES, ps | pt) if not p]
    for f in (fs, ft):
        freq = dict(zip(CLASS_NAMES, f))
        assert 0.25 <= freq["road"] <= 0.50
        assert 0.12 <= freq["building"] <= 0.35
        assert 0.08 <= freq["vegetation"] <= 0.25
        assert 0.03 <= freq["car"] <= 0.12
        for name in RARE:
            assert freq[name] < 0.015, name
    both = dict(zip(CLASS_NAMES, fs + ft))
    for name in RARE:
        assert both[name] > 0, name


def test_label_shift_direction(sample):
    fs = dict(zip(CLASS_NAMES, sample["source"][0]))
    ft = dict(zip(CLASS_NAMES, sample["target_train"][0]))
    assert ft["person"] + ft["bicycle"] > fs["person"] + fs["bicycle"]
    assert fs["car"] + fs["truck"] > ft["car"] + ft["truck"]


def test_appearance_shift(sample):
    # shift=1: the source is brighter / more colourful than the target
    gap = np.abs(sample["source"][2] - sample["target_train"][2]).max()
    assert gap > 8


def test_shift_zero_makes_domains_identical():
    # same parameters ...
    s0, t0 = domain_style("source", 0.0), domain_style("target")
    for k in ("sky", "car", "sensor", "camera"):
        for leaf in s0[k]:
            assert np.array_equal(s0[k][leaf], t0[k][leaf])
    assert domain_priors("source", 0.0) == domain_priors("target")
    # ... hence identical scenes from the same generator state ...
    a = render_scene(np.random.default_rng(11), "source", (64, 128), shift=0.0)
    b = render_scene(np.random.default_rng(11), "target", (64, 128), shift=0.0)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    # ... and close statistics over independent samples (but not at shift=1)
    fs0, _, ms0 = _counts("source", 40, seed=5, shift=0.0, size=(48, 96))
    ft0, _, mt0 = _counts("target_train", 40, seed=5, shift=0.0, size=(48, 96))
    _, _, ms1 = _counts("source", 40, seed=5, shift=1.0, size=(48, 96))
    assert np.abs(fs0 - ft0).sum() < 0.15  # L1 distance of the class distributions
    assert np.abs(ms0 - mt0).max() < 5  # mean colour (grey levels)
    assert np.abs(ms1 - mt0).max() > 12


def test_balanced_profile_lightens_the_tail():
    rare = [CLASS_NAMES.index(n) for n in RARE]
    shares = {}
    for profile in ("cityscapes", "uniform-ish"):
        tot = np.zeros(NUM_CLASSES + 1)
        for i in range(16):
            _, lab = render_scene(image_rng(2, "target_train", i), "target", (48, 96), profile=profile)
            tot += np.bincount(np.minimum(lab, NUM_CLASSES).ravel(), minlength=NUM_CLASSES + 1)
        shares[profile] = tot[rare].sum() / tot[:NUM_CLASSES].sum()
    assert shares["uniform-ish"] > 1.5 * shares["cityscapes"]


# ---------------------------------------------------------------------------------------- on disk
def test_source_gta5_format(small_bench):
    out, _ = small_bench
    imgs = sorted(p.name for p in (out / "source" / "images").iterdir())
    labs = sorted(p.name for p in (out / "source" / "labels").iterdir())
    assert imgs == labs == [f"{i:05d}.png" for i in range(SMALL["n_source"])]
    valid = set(TRAINID_TO_LABELID) | {0}
    for name in imgs:
        im = Image.open(out / "source" / "images" / name)
        lab = Image.open(out / "source" / "labels" / name)
        assert im.mode == "RGB" and im.size == (128, 64)
        assert lab.mode == "P" and lab.size == (128, 64)
        ids = np.asarray(lab)
        assert set(np.unique(ids)) <= valid
        assert (CITYSCAPES_LUT[ids] != IGNORE_INDEX).mean() > 0.9


def test_target_cityscapes_format(small_bench):
    out, _ = small_bench
    pat = re.compile(r"^([a-z]+)_(\d{6})_(\d{6})_leftImg8bit\.png$")
    for split, n in (("train", SMALL["n_target_train"]), ("val", SMALL["n_target_val"])):
        images = sorted((out / "target" / "leftImg8bit" / split).rglob("*.png"))
        assert len(images) == n
        cities = set()
        for p in images:
            m = pat.match(p.name)
            assert m and m.group(1) == p.parent.name
            cities.add(m.group(1))
            stem = p.name[: -len("_leftImg8bit.png")]
            lp = out / "target" / "gtFine" / split / p.parent.name / f"{stem}_gtFine_labelIds.png"
            lab = Image.open(lp)
            assert lab.mode == "L"
            ids = np.asarray(lab)
            assert ids.dtype == np.uint8 and ids.shape == (64, 128)
            assert set(np.unique(ids)) <= set(TRAINID_TO_LABELID) | {0}
            assert Image.open(p).mode == "RGB"
        assert cities <= set(streets.TARGET_CITIES[split])
    assert not set(streets.TARGET_CITIES["train"]) & set(streets.TARGET_CITIES["val"])


def test_files_match_render_scene(small_bench):
    out, _ = small_bench
    img, lab = render_scene(image_rng(SMALL["seed"], "source", 2), "source", SMALL["size"])
    assert np.array_equal(np.asarray(Image.open(out / "source" / "images" / "00002.png")), img)
    assert np.array_equal(CITYSCAPES_LUT[np.asarray(Image.open(out / "source" / "labels" / "00002.png"))], lab)


def test_meta_summary_and_reuse(small_bench):
    out, summary = small_bench
    meta = json.loads((out / "meta.json").read_text())
    assert meta["complete"] and meta["params"]["seed"] == SMALL["seed"]
    assert meta["params"]["size"] == list(SMALL["size"]) and meta["params"]["profile"] == "cityscapes"
    freqs = summary["class_frequencies"]
    assert set(freqs) == {"source", "target_train", "target_val"}
    for f in freqs.values():
        assert set(f) == set(CLASS_NAMES)
        assert abs(sum(f.values()) - 1) < 1e-3
    assert summary["ignore_fraction"]["target_train"] > summary["ignore_fraction"]["source"]
    for name in ("samples_source.png", "samples_target.png"):
        page = Image.open(out / name)
        assert page.size[0] > 2 * 128 and page.size[1] >= 3 * 64
    assert streets_exists(out, **SMALL)
    assert not streets_exists(out, **{**SMALL, "seed": 8})
    assert not streets_exists(out, **{**SMALL, "shift": 0.5})
    assert not streets_exists(out.parent / "missing", **SMALL)
    again = generate_streets(out, progress=False, **SMALL)
    assert again["reused"] and again["class_frequencies"] == freqs


def test_byte_identical_regardless_of_workers(small_bench, tmp_path):
    out, _ = small_bench
    other = tmp_path / "one_worker"
    generate_streets(other, progress=False, workers=1, **SMALL)
    files = sorted(p.relative_to(out) for p in out.rglob("*.png"))
    assert files == sorted(p.relative_to(other) for p in other.rglob("*.png"))
    for rel in files:
        assert (out / rel).read_bytes() == (other / rel).read_bytes(), rel
    assert (out / "meta.json").read_bytes() == (other / "meta.json").read_bytes()


def test_regenerates_when_params_change(tmp_path):
    out = tmp_path / "b"
    params = dict(size=(32, 64), n_source=3, n_target_train=2, n_target_val=1, seed=1)
    generate_streets(out, progress=False, workers=1, **params)
    s = generate_streets(out, progress=False, workers=1, **{**params, "n_source": 2})
    assert not s["reused"]
    assert len(list((out / "source" / "images").iterdir())) == 2
    assert streets_exists(out, **{**params, "n_source": 2})


def test_refuses_foreign_folder(tmp_path):
    (tmp_path / "source").mkdir()
    (tmp_path / "source" / "x.txt").write_text("not ours")
    with pytest.raises(FileExistsError):
        generate_streets(
            tmp_path, progress=False, workers=1, size=(32, 64), n_source=1, n_target_train=1, n_target_val=1
        )


# ------------------------------------------------------------------------------ v2: nuisance gap
IDENTITY_KEYS = ("light", "sign", "truck", "bus", "train", "motorcycle", "bicycle", "rider")


def test_default_gap_keeps_class_identity_palettes():
    # the default (nuisance) gap never recolours a class like another one of the other domain ...
    src, tgt = domain_style("source", 1.0), domain_style("target")
    for key in IDENTITY_KEYS:
        for leaf in tgt[key]:
            assert np.array_equal(src[key][leaf], tgt[key][leaf]), (key, leaf)
    # ... while sensor, camera, textures, illumination and proportions shift fully
    assert src["sensor"]["sun"] > 0.9 > 0.2 > tgt["sensor"]["sun"]
    assert not np.array_equal(src["camera"]["f"], tgt["camera"]["f"])
    assert not np.array_equal(src["texture_table"], tgt["texture_table"])
    # the opt-in hard profile adds the class-swapping palettes (source trucks like target buses)
    hard = domain_style("source", 1.0, profile="hard")
    assert not np.array_equal(hard["truck"]["cargo"], tgt["truck"]["cargo"])
    assert not np.array_equal(hard["light"]["box"], tgt["light"]["box"])
    assert domain_priors("source", 1.0, "hard") == domain_priors("source", 1.0, "cityscapes")


def test_colours_vary_from_image_to_image():
    st = domain_style("target")
    a = streets.style.vary_style(st, np.random.default_rng(0))
    b = streets.style.vary_style(st, np.random.default_rng(1))
    again = streets.style.vary_style(st, np.random.default_rng(0))
    assert np.array_equal(a["road"]["base"], again["road"]["base"])
    assert not np.array_equal(a["road"]["base"], b["road"]["base"])
    assert not np.array_equal(a["texture_table"], b["texture_table"])
    assert np.array_equal(a["light"]["lamps"], st["light"]["lamps"])  # signal colours stay
    assert np.array_equal(a["person"]["height"], st["person"]["height"])  # non-colour leaves stay
    # the variation is wide: over 200 images the road colour spans tens of grey levels
    roads = np.stack([streets.style.vary_style(st, np.random.default_rng(i))["road"]["base"] for i in range(200)])
    assert (roads.max(0) - roads.min(0)).min() > 40


def test_generator_version_is_3_and_profiles():
    assert streets.GENERATOR_VERSION == 3
    assert set(streets.PROFILES) == {"cityscapes", "balanced", "hard"}
    img, lab = render_scene(np.random.default_rng(0), "source", (48, 96), profile="hard")
    assert img.shape == (48, 96, 3)


# ------------------------------------------------------------- real shapes: sizes, SYNTHIA, quirks
TWO_SIZES = dict(size=(32, 64), source_size=(40, 72), n_source=2, n_target_train=2, n_target_val=1, seed=3)


def test_default_params_and_explicit_defaults_unchanged(small_bench, tmp_path):
    # the default output keeps the keys of earlier folders (so they stay reusable) ...
    out, summary = small_bench
    meta = json.loads((out / "meta.json").read_text())
    assert set(meta["params"]) == {
        "size",
        "n_source",
        "n_target_train",
        "n_target_val",
        "seed",
        "shift",
        "profile",
        "version",
    }
    assert "quirks" not in summary
    # ... and spelling the defaults out writes the same bytes
    other = tmp_path / "explicit"
    generate_streets(
        other,
        progress=False,
        workers=1,
        source_size=SMALL["size"],
        target_size=SMALL["size"],
        source_format="gta5",
        quirks=False,
        **SMALL,
    )
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(other) for p in other.rglob("*") if p.is_file())
    for rel in files:
        assert (out / rel).read_bytes() == (other / rel).read_bytes(), rel


def test_separate_source_and_target_sizes(tmp_path):
    from balda.data.datasets import CityscapesDataset, GTA5Dataset

    out = tmp_path / "b"
    s = generate_streets(out, progress=False, workers=1, **TWO_SIZES)
    assert s["params"]["source_size"] == [40, 72] and s["params"]["target_size"] == [32, 64]
    assert "size" not in s["params"]
    src = GTA5Dataset(out / "source")
    assert all(src.load(i)[0].shape == (40, 72, 3) for i in range(len(src)))
    for split in ("train", "val"):
        tgt = CityscapesDataset(out / "target", split)
        assert all(tgt.load(i)[1].shape == (32, 64) for i in range(len(tgt)))
    img, lab = render_scene(image_rng(3, "source", 1), "source", (40, 72))
    assert np.array_equal(src.load(1)[0], img) and np.array_equal(src.load(1)[1], lab)
    assert Image.open(out / "samples_source.png").size[1] > Image.open(out / "samples_target.png").size[1]
    assert streets_exists(out, **TWO_SIZES)
    assert streets_exists(out, **{**TWO_SIZES, "size": (1, 1), "target_size": (32, 64)})  # same sizes, spelt apart
    assert not streets_exists(out, **{**TWO_SIZES, "source_size": (32, 64)})
    assert generate_streets(out, progress=False, **TWO_SIZES)["reused"]


def test_synthia_format_read_by_synthia_dataset(tmp_path):
    import cv2

    from balda.data.datasets import SynthiaDataset
    from balda.data.labels import TRAINID_TO_SYNTHIA

    out = tmp_path / "syn"
    params = {**TWO_SIZES, "n_source": 3, "source_format": "synthia"}
    s = generate_streets(out, progress=False, workers=1, **params)
    assert s["params"]["source_format"] == "synthia"
    base = out / "source" / "RAND_CITYSCAPES"
    names = [f"{i:07d}.png" for i in range(3)]
    assert sorted(p.name for p in (base / "RGB").iterdir()) == names
    assert sorted(p.name for p in (base / "GT" / "LABELS").iterdir()) == names
    assert not (out / "source" / "images").exists()
    raw = cv2.imread(str(base / "GT" / "LABELS" / names[2]), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw.shape == (40, 72, 3)
    assert not raw[..., 0].any()  # B is 0
    img, lab, ins = render_scene(image_rng(3, "source", 2), "source", (40, 72), with_instances=True)
    assert np.array_equal(raw[..., 1], ins)  # G holds the instance ids (version 3)
    assert set(np.unique(raw[..., 2])) <= set(TRAINID_TO_SYNTHIA) | {0}
    assert np.array_equal(raw[..., 2] == 0, lab == IGNORE_INDEX)
    ds = SynthiaDataset(out / "source")
    assert len(ds) == 3 and ds.names == [n[:-4] for n in names]
    got_img, got_lab = ds.load(2)
    assert np.array_equal(got_img, img) and np.array_equal(got_lab, lab)
    assert streets_exists(out, **params) and not streets_exists(out, **{**params, "source_format": "gta5"})


def test_quirks_read_by_gta5_dataset_with_a_warning(tmp_path, caplog):
    import logging

    from balda.data.datasets import GTA5Dataset

    out = tmp_path / "q"
    params = {**TWO_SIZES, "n_source": 5, "quirks": True}
    s = generate_streets(out, progress=False, workers=1, **params)
    assert s["params"]["quirks"] is True
    odd = {p.split("/")[-1][:-4] for p in s["quirks"]["odd_size"]}
    (resized,) = {p.split("/")[-1][:-4] for p in s["quirks"]["label_size"]}
    assert len(odd) == 2 and resized not in odd
    ds = GTA5Dataset(out / "source")
    with caplog.at_level(logging.WARNING, logger="balda.data"):
        shapes = {name: ds.load(i) for i, name in enumerate(ds.names)}
    warned = [r.getMessage() for r in caplog.records if "resizing the label" in r.getMessage()]
    assert len(warned) == 1 and f"labels/{resized}.png" in warned[0]
    for name, (img, lab) in shapes.items():
        assert img.shape[:2] == lab.shape == ((38, 72) if name in odd else (40, 72)), name
    raw = Image.open(out / "source" / "labels" / f"{resized}.png")
    assert raw.size[0] < 72 and raw.size[1] < 40
    assert abs(raw.size[0] / raw.size[1] / (72 / 40) - 1) < 0.02
    # deterministic, and not without quirks
    again = generate_streets(tmp_path / "q2", progress=False, workers=1, **params)
    assert again["quirks"] == s["quirks"]
    assert not streets_exists(out, **{**params, "quirks": False})


def test_new_options_reject_bad_values(tmp_path):
    from balda.core.errors import ConfigError

    for bad in (
        {"source_format": "cityscapes"},
        {"source_format": "synthia", "quirks": True},
        {"source_size": (0, 64)},
        {"target_size": (32,)},
    ):
        with pytest.raises(ConfigError):
            generate_streets(tmp_path / "x", progress=False, workers=1, **{**TWO_SIZES, **bad})


def test_cli_generate_sizes_and_synthia(tmp_path, capsys):
    from balda.cli import main

    out = tmp_path / "cli"
    rc = main(
        [
            "generate",
            "streets",
            "--out",
            str(out),
            "--size",
            "32",
            "64",
            "--source-size",
            "40",
            "72",
            "--source-format",
            "synthia",
            "--n-source",
            "2",
            "--n-target-train",
            "1",
            "--n-target-val",
            "1",
            "--no-progress",
        ]
    )
    assert rc == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["params"]["source_size"] == [40, 72] and meta["params"]["target_size"] == [32, 64]
    assert len(list((out / "source" / "RAND_CITYSCAPES" / "RGB").glob("*.png"))) == 2
