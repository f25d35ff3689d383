"""The offline digits benchmark (balda.data.digits): determinism, layout, domain shift, loader round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from balda.data.classification import ImageListDataset
from balda.data.digits import (
    DEFAULT_SIZE,
    digits_exists,
    generate_digits,
    load_digits_meta,
    load_sklearn_digits,
    render_source,
    render_target,
    split_digits,
)

SMALL = dict(seed=3, size=32, n_per_class=10)


def _files(root) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits") / "bench"
    return out, generate_digits(out, seed=0)


def test_sklearn_digits_are_the_bundled_set():
    images, labels = load_sklearn_digits()
    assert images.shape == (1797, 8, 8) and labels.shape == (1797,)
    assert images.min() == 0.0 and images.max() == 1.0
    assert np.bincount(labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_split_is_disjoint_complete_and_stratified():
    _, labels = load_sklearn_digits()
    s = split_digits(labels, seed=0)
    a, b, c = s["source"], s["target_train"], s["target_test"]
    assert len(set(a) | set(b) | set(c)) == len(a) + len(b) + len(c) == 1797
    for part, frac in ((a, 0.5), (b, 0.3), (c, 0.2)):
        counts = np.bincount(labels[part], minlength=10)
        assert np.all(np.abs(counts - frac * np.bincount(labels)) <= 1)
    assert not np.array_equal(split_digits(labels, seed=1)["source"], a)
    with pytest.raises(ValueError):
        split_digits(labels, fractions=(0.5, 0.5, 0.5))


def test_generation_is_byte_identical_for_a_seed(tmp_path):
    s1 = generate_digits(tmp_path / "a", **SMALL)
    s2 = generate_digits(tmp_path / "b", **SMALL)
    f1, f2 = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(f1) == 100 + 3 + 2  # images, three lists, meta.json, samples.png
    assert f1 == f2
    assert not s1["reused"] and s1["num_images"] == s2["num_images"] == {
        "source": 50,
        "target_train": 30,
        "target_test": 20,
    }
    other = generate_digits(tmp_path / "c", **{**SMALL, "seed": 4})
    assert other["num_images"] == s1["num_images"]
    f3 = _files(tmp_path / "c")
    assert f3["target/train.txt"] != f1["target/train.txt"]  # another split, other renderings


def test_exists_reuse_and_replacement(tmp_path):
    out = tmp_path / "d"
    assert not digits_exists(out, **SMALL)
    generate_digits(out, **SMALL)
    assert digits_exists(out, **SMALL)
    assert not digits_exists(out, **{**SMALL, "seed": 9})
    assert generate_digits(out, **SMALL)["reused"]
    meta = load_digits_meta(out)
    assert meta["complete"] and meta["params"]["n_per_class"] == 10
    assert meta == json.loads((out / "meta.json").read_text())
    # an incomplete folder is not reused
    victim = out / "target" / (out / "target" / "test.txt").read_text().split()[0]
    victim.unlink()
    assert not digits_exists(out, **SMALL)
    assert not generate_digits(out, **SMALL)["reused"] and digits_exists(out, **SMALL)
    # other parameters replace the benchmark
    generate_digits(out, **{**SMALL, "size": 16})
    assert digits_exists(out, **{**SMALL, "size": 16}) and not digits_exists(out, **SMALL)
    # a folder that is not a benchmark is never deleted
    alien = tmp_path / "alien"
    (alien / "source").mkdir(parents=True)
    (alien / "source" / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError):
        generate_digits(alien, **SMALL)
    assert (alien / "source" / "mine.txt").read_text() == "keep"


def test_full_benchmark_layout_and_loader(full):
    out, summary = full
    assert summary["num_images"] == {"source": 898, "target_train": 539, "target_test": 360}
    assert digits_exists(out, seed=0)
    sets = {}
    for key, rel in summary["paths"].items():
        ds = ImageListDataset(out / rel)
        assert len(ds) == summary["num_images"][key] and ds.num_classes == 10
        assert ds.classes == [str(c) for c in range(10)]
        assert ds.class_counts().tolist() == summary["class_counts"][key]
        img, label = ds.load(0)
        assert img.shape == (DEFAULT_SIZE, DEFAULT_SIZE, 3) and img.dtype == np.uint8 and 0 <= label < 10
        sets[key] = {n.split("/")[-1] for n in ds.names}
    assert not (sets["source"] & sets["target_train"] or sets["source"] & sets["target_test"])
    assert not sets["target_train"] & sets["target_test"]
    # labels agree with scikit-learn's
    _, labels = load_sklearn_digits()
    ds = ImageListDataset(out / "target" / "test.txt")
    idx = [int(n.split("/")[-1][:4]) for n in ds.names]
    assert np.array_equal(ds.labels, labels[idx])


def test_target_differs_from_source(full):
    out, summary = full
    src = ImageListDataset(out / "source" / "train.txt")
    tgt = ImageListDataset(out / "target" / "train.txt")
    s = np.stack([src.load(i)[0] for i in range(50)]).astype(np.float64)
    t = np.stack([tgt.load(i)[0] for i in range(50)]).astype(np.float64)
    # source: grey (R = G = B), black background; target: coloured, textured background
    assert np.all(s[..., 0] == s[..., 1]) and np.all(s[..., 1] == s[..., 2])
    assert s[:, :3, :3].max() == 0
    assert np.abs(t[..., 0] - t[..., 1]).mean() > 20
    assert t[:, :3, :3].mean() > 40 and t[:, :3, :3].std() > 30
    # same digit rendered in both domains: far apart
    images, _ = load_sklearn_digits()
    a = render_source(images[0]).astype(np.float64)
    b = render_target(images[0], np.random.default_rng(0)).astype(np.float64)
    assert np.abs(a - b).mean() > 40


def test_target_is_the_mnist_m_blend_of_the_digit():
    """|T - 255 m|: the digit's pixels are the inverted texture, so the image changes where the
    (transformed) digit is and the change depends on the texture brightness."""
    images, _ = load_sklearn_digits()
    blank = render_target(np.zeros((8, 8)), np.random.default_rng(5), size=32)
    digit = render_target(images[10], np.random.default_rng(5), size=32)  # same texture, same noise
    diff = np.abs(digit.astype(int) - blank.astype(int)).max(axis=2)
    assert (diff > 100).mean() > 0.05  # strokes invert the texture
    assert np.median(diff[:2]) < 40  # top rows: background, nearly untouched
    assert render_source(images[10], size=16).shape == (16, 16, 3)
    with pytest.raises(ValueError):
        generate_digits("unused", size=4)
