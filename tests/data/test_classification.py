"""Classification datasets (balda.data.classification): image lists, class folders, transforms, batches."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from balda.core.errors import DataError
from balda.data.classification import (
    ClassFolderDataset,
    ClsCollate,
    ClsTransform,
    ClsView,
    ImageListDataset,
    normalize_batch,
    open_classification_dataset,
)
from balda.data.transforms import IMAGENET_MEAN, IMAGENET_STD

CLASSES = ("back_pack", "bike", "desk chair")


def _img(rng, h=12, w=16) -> np.ndarray:
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.fixture
def office(tmp_path):
    """An Office-31-style tree ``amazon/images/<class>/frame_NNNN.jpg`` plus an image list of it."""
    rng = np.random.default_rng(0)
    root = tmp_path / "office31"
    lines, images = ["# amazon", ""], {}
    for c, cls in enumerate(CLASSES):
        for j in range(2):
            rel = f"amazon/images/{cls}/frame_{j:04d}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            img = _img(rng)
            Image.fromarray(img).save(root / rel)
            images[rel] = (img, c)
            lines.append(f"{rel} {c}")
    lines.append("   ")
    lst = root / "image_list" / "amazon.txt"
    lst.parent.mkdir()
    lst.write_text("\n".join(lines) + "\n")
    return root, lst, images


def _write_list(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------------------------------- image list
def test_image_list_reads_images_labels_and_class_names(office):
    root, lst, images = office
    ds = ImageListDataset(lst, root=root)
    assert len(ds) == 6 and ds.num_classes == 3
    assert ds.classes == list(CLASSES)  # inferred from the parent folders, path with a space included
    assert ds.names == list(images)  # list order, names as written
    for i, name in enumerate(ds.names):
        img, label = ds.load(i)
        want, c = images[name]
        assert img.dtype == np.uint8 and img.shape == (12, 16, 3)
        assert np.array_equal(img, want) and label == c
    assert ds.class_counts().tolist() == [2, 2, 2]
    assert ds.where(0) == f"{lst}:3"  # a comment and a blank line come first
    assert ds.fingerprint() == ImageListDataset(lst, root=root).fingerprint()


def test_image_list_given_classes_and_num_classes(office):
    root, lst, _ = office
    ds = ImageListDataset(lst, root=root, num_classes=5)
    assert ds.num_classes == 5 and ds.classes == ["0", "1", "2", "3", "4"]
    ds = ImageListDataset(lst, root=root, classes=["a", "b", "c", "d"])
    assert ds.classes == ["a", "b", "c", "d"]
    assert len(ImageListDataset(lst, root=root, max_items=4)) == 4


def test_default_root_is_the_list_folder(tmp_path):
    Image.fromarray(_img(np.random.default_rng(1))).save(tmp_path / "a.png")
    ds = ImageListDataset(_write_list(tmp_path / "train.txt", ["a.png 0"]))
    assert ds.root == tmp_path and ds.load(0)[1] == 0


def test_label_outside_the_classes_names_file_and_line(office, tmp_path):
    root, _, images = office
    rel = list(images)
    lst = _write_list(tmp_path / "l.txt", [f"{rel[0]} 0", "", f"{rel[1]} 3"])
    with pytest.raises(DataError, match=r"l\.txt:3: label 3 .* outside 0\.\.2") as err:
        ImageListDataset(lst, root=root, num_classes=3)
    assert err.value.path == lst
    with pytest.raises(DataError, match=r"l\.txt:3: label 3 .* outside 0\.\.1"):
        ImageListDataset(lst, root=root, classes=["x", "y"])
    neg = _write_list(tmp_path / "neg.txt", [f"{rel[0]} -1"])
    with pytest.raises(DataError, match=r"neg\.txt:1: label -1"):
        ImageListDataset(neg, root=root)


@pytest.mark.parametrize("bad", ["just_a_path.png", "a.png one", "a.png 1.5"])
def test_malformed_line_names_file_and_line(tmp_path, bad):
    Image.fromarray(_img(np.random.default_rng(2))).save(tmp_path / "a.png")
    lst = _write_list(tmp_path / "bad.txt", ["a.png 0", "# comment", bad])
    with pytest.raises(DataError, match=r"bad\.txt:3: ") as err:
        ImageListDataset(lst)
    assert err.value.path == lst


def test_empty_or_missing_list(tmp_path):
    empty = _write_list(tmp_path / "empty.txt", ["# nothing", "", "  "])
    with pytest.raises(DataError, match=r"empty\.txt holds no entries"):
        ImageListDataset(empty)
    with pytest.raises(DataError, match="not found"):
        ImageListDataset(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="root folder not found"):
        ImageListDataset(_write_list(tmp_path / "one.txt", ["a.png 0"]), root=tmp_path / "nowhere")


def test_missing_image_raises_with_line_or_is_skipped(office, caplog):
    root, lst, images = office
    lines = lst.read_text().splitlines()
    lines.insert(4, "amazon/images/bike/gone.png 1")  # line 5
    _write_list(lst, lines)
    with pytest.raises(DataError, match=r"amazon\.txt:5: image .*gone\.png not found") as err:
        ImageListDataset(lst, root=root)
    assert err.value.path.name == "gone.png"
    with caplog.at_level(logging.WARNING, logger="balda.data"):
        ds = ImageListDataset(lst, root=root, on_error="skip")
    assert len(ds) == 6 and "gone.png (line 5)" in caplog.text
    assert "amazon/images/bike/gone.png" not in ds.names


def test_unreadable_image_names_list_line_and_skip_moves_on(office, caplog):
    root, lst, images = office
    rel = list(images)
    (root / rel[1]).write_bytes(b"not a png")
    ds = ImageListDataset(lst, root=root)
    with pytest.raises(DataError, match=rf"{rel[1]}.*listed at .*amazon\.txt:4"):
        ds.load(1)
    skip = ImageListDataset(lst, root=root, on_error="skip")
    with caplog.at_level(logging.WARNING, logger="balda.data"):
        j, img, label = skip.load_or_skip(1)
        assert (j, label) == (2, 1) and np.array_equal(img, images[rel[2]][0])
        assert skip.load_or_skip(1)[0] == 2
    assert caplog.text.count("skipping unreadable item 1") == 1  # logged once
    view = ClsView(skip, ClsTransform(train=False))
    assert int(view[1]["index"]) == 2


# -------------------------------------------------------------------------------------- class folders
def test_class_folders_sorted_classes_and_images(tmp_path):
    rng = np.random.default_rng(3)
    for cls, n in (("zebra", 2), ("ant", 1), ("moose", 3)):
        (tmp_path / cls / "sub").mkdir(parents=True)
        for j in range(n):
            Image.fromarray(_img(rng)).save(tmp_path / cls / ("sub" if j == 2 else "") / f"{j}.JPG", format="JPEG")
    (tmp_path / "ant" / "notes.txt").write_text("x")
    (tmp_path / "ant" / ".hidden.png").write_bytes(b"")
    ds = ClassFolderDataset(tmp_path)
    assert ds.classes == ["ant", "moose", "zebra"] and ds.num_classes == 3
    assert ds.names == ["ant/0.JPG", "moose/0.JPG", "moose/1.JPG", "moose/sub/2.JPG", "zebra/0.JPG", "zebra/1.JPG"]
    assert ds.labels.tolist() == [0, 1, 1, 1, 2, 2]
    img, label = ds.load(3)
    assert img.shape == (12, 16, 3) and label == 1
    assert ds.where(0).endswith("ant/0.JPG")
    assert isinstance(open_classification_dataset(tmp_path), ClassFolderDataset)
    ordered = ClassFolderDataset(tmp_path, classes=["zebra", "ant"])
    assert ordered.labels.tolist() == [0, 0, 1]


def test_class_folders_errors(tmp_path):
    (tmp_path / "a").mkdir()
    Image.fromarray(_img(np.random.default_rng(4))).save(tmp_path / "a" / "x.png")
    (tmp_path / "b").mkdir()
    with pytest.raises(DataError, match="holds no images") as err:
        ClassFolderDataset(tmp_path)
    assert err.value.path == tmp_path / "b"
    ds = ClassFolderDataset(tmp_path, on_error="skip")  # empty class kept (labels stay stable)
    assert ds.classes == ["a", "b"] and len(ds) == 1
    with pytest.raises(DataError, match="not found"):
        ClassFolderDataset(tmp_path, classes=["a", "c"])
    with pytest.raises(DataError, match="not found"):
        open_classification_dataset(tmp_path / "missing")


# ----------------------------------------------------------------------------- transforms and batches
def test_train_transform_is_seeded_and_crops_and_flips():
    img = np.random.default_rng(5).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    t = ClsTransform(resize=(16, 24), crop=12, train=True, flip=1.0)
    a, b = t(img, np.random.default_rng(7)), t(img, np.random.default_rng(7))
    assert a.dtype == torch.uint8 and a.shape == (3, 12, 12) and torch.equal(a, b)
    # the crop is a window of the resized image, mirrored
    rs = ClsTransform(resize=(16, 24), train=False)(img).permute(1, 2, 0).numpy()
    a_hwc = a.permute(1, 2, 0).numpy()[:, ::-1]
    hits = [(y, x) for y in range(5) for x in range(13) if np.array_equal(rs[y : y + 12, x : x + 12], a_hwc)]
    assert hits
    with pytest.raises(ValueError):
        t(img)  # training needs an explicit generator


def test_eval_transform_center_crop_and_small_inputs():
    img = np.arange(10 * 10 * 3, dtype=np.uint8).reshape(10, 10, 3)
    out = ClsTransform(crop=(4, 6), train=False)(img)
    assert torch.equal(out, torch.from_numpy(img[3:7, 2:8].transpose(2, 0, 1).copy()))
    padded = ClsTransform(crop=12, train=False)(img)  # smaller than the crop: zero padding
    assert padded.shape == (3, 12, 12) and int(padded[:, -1].sum()) == 0


def test_view_and_collate_give_normalised_batches(office):
    root, lst, images = office
    ds = ImageListDataset(lst, root=root)
    view = ClsView(ds, ClsTransform(resize=8, crop=6, train=True))
    samples = [view[(i, 100 + i, -1)] for i in range(4)]
    assert torch.equal(view[(2, 102, -1)]["image"], samples[2]["image"])
    batch = ClsCollate()(samples)
    assert batch["image"].shape == (4, 3, 6, 6) and batch["image"].dtype == torch.float32
    assert batch["label"].tolist() == [0, 0, 1, 1] and batch["label"].dtype == torch.long
    assert batch["index"].tolist() == [0, 1, 2, 3]
    raw = torch.stack([s["image"] for s in samples]).float()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(batch["image"], (raw - mean) / std)
    torch.testing.assert_close(normalize_batch(raw, (127.0,) * 3, (128.0,) * 3), (raw - 127) / 128)
    loader = torch.utils.data.DataLoader(view, batch_size=3, collate_fn=ClsCollate((127.0,) * 3, (128.0,) * 3))
    first = next(iter(loader))
    assert first["image"].shape == (3, 3, 6, 6) and first["index"].tolist() == [0, 1, 2]
