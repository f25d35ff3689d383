"""Instance ids of the street benchmark (generator version 3): the object map of the canvas, the
instance maps of render_scene, and the Cityscapes / SYNTHIA instance files of the writer."""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pytest
from PIL import Image

from balda.data.labels import CITYSCAPES_LUT, IGNORE_INDEX
from balda.data.panoptic import THING_TRAINIDS, read_cityscapes_instance_ids, read_synthia_instance_ids
from balda.data.streets import generate_streets, image_rng, render_scene, streets_exists
from balda.data.streets.geometry import _Canvas
from balda.data.streets.instances import THINGS, cityscapes_instance_ids, instance_map

PERSON, RIDER, CAR, MOTO, BIKE, BUILDING, POLE = 11, 12, 13, 17, 18, 2, 5

#: sha256 (first 16 hex digits) of ``image.tobytes() + label.tobytes()`` of render_scene with
#: ``image_rng(11, key, index)``, recorded with the generator of version 2 (before instance ids
#: existed): version 3 must draw the same images and labels, with and without instances.
V2_HASHES = [
    ("source", "source", 0, (32, 64), "cityscapes", "9424d72fb2f456e8"),
    ("target_train", "target", 1, (32, 64), "cityscapes", "901105625719186e"),
    ("source", "source", 5, (64, 128), "hard", "99ff90125fa92ab0"),
    ("target_val", "target", 2, (64, 128), "balanced", "e46a1b402b585d87"),
    ("source", "source", 3, (48, 96), "cityscapes", "bb4d6bc9f1abb544"),
    ("target_train", "target", 7, (48, 96), "cityscapes", "5ed84ac0aa16ed91"),
]


def _hash(img: np.ndarray, lab: np.ndarray) -> str:
    return hashlib.sha256(img.tobytes() + lab.tobytes()).hexdigest()[:16]


@pytest.mark.parametrize("key,domain,index,size,profile,expected", V2_HASHES)
def test_images_and_labels_identical_to_version_2(key, domain, index, size, profile, expected):
    img, lab = render_scene(image_rng(11, key, index), domain, size, profile=profile)
    img2, lab2, ins = render_scene(image_rng(11, key, index), domain, size, profile=profile, with_instances=True)
    assert _hash(img, lab) == expected
    assert _hash(img2, lab2) == expected
    assert ins.dtype == np.int32 and ins.shape == lab.shape


def test_thing_list_matches_panoptic():
    assert THINGS == THING_TRAINIDS


def test_canvas_object_map_and_instance_map():
    cv = _Canvas(20, 40, with_objects=True)
    cv.fill(np.array([[0, 0], [40, 0], [40, 20], [0, 20]]), BUILDING, (1, 2, 3))  # background: object 0
    cv.current = 1  # a car
    cv.fill(np.array([[2, 2], [14, 2], [14, 12], [2, 12]]), CAR, (9, 9, 9))
    cv.current = 2  # a rider on a bicycle: one object, two instances
    cv.fill(np.array([[20, 10], [30, 10], [30, 18], [20, 18]]), BIKE, (5, 5, 5))
    cv.fill(np.array([[22, 2], [28, 2], [28, 10], [22, 10]]), RIDER, (6, 6, 6))
    cv.current = 3  # a pole in front of the car: its pixels leave the car instance
    cv.line(np.array([[8, 0], [8, 19]]), POLE, (7, 7, 7), 2)
    cv.current = 4  # a person overlapping the car: the overlap becomes the person's
    cv.fill(np.array([[12, 4], [17, 4], [17, 14], [12, 14]]), PERSON, (8, 8, 8))
    cv.current = 0
    cv.lab[16:] = IGNORE_INDEX  # written directly, like the ego-vehicle bonnet
    ins = instance_map(cv.obj, cv.lab)
    assert ins.dtype == np.int32 and ins.shape == (20, 40)
    cls = {int(k): set(np.unique(cv.lab[ins == k]).tolist()) for k in np.unique(ins[ins > 0])}
    assert cls == {1: {CAR}, 2: {RIDER}, 3: {BIKE}, 4: {PERSON}}  # (object, class) order
    assert (ins[cv.lab == POLE] == 0).all() and (ins[cv.lab == BUILDING] == 0).all()
    assert (ins[16:] == 0).all()
    assert (cv.lab[3, 8] == POLE) and ins[3, 8] == 0 and ins[3, 3] == 1
    assert ins[6, 13] == 4  # overwritten by the later person
    # without the object map the canvas paints the same image and labels
    plain = _Canvas(20, 40)
    plain.fill(np.array([[2, 2], [14, 2], [14, 12], [2, 12]]), CAR, (9, 9, 9))
    assert plain.obj is None


def _scenes(n: int = 12, domain: str = "target", size=(64, 128)):
    key = "target_train" if domain == "target" else "source"
    return [render_scene(image_rng(0, key, i), domain, size, with_instances=True) for i in range(n)]


def test_render_instances_are_the_visible_things():
    n_riders = 0
    for _img, lab, ins in _scenes():
        is_thing = np.isin(lab, THING_TRAINIDS)
        assert (ins[~is_thing] == 0).all()  # stuff, unlabelled and bonnet pixels
        assert (ins[is_thing] > 0).all()  # every thing pixel was painted by an object
        ids = np.unique(ins[ins > 0])
        assert ids.tolist() == list(range(1, len(ids) + 1))  # numbered 1..N
        for k in ids:
            assert len(np.unique(lab[ins == k])) == 1  # one class per instance
        assert (ins[lab == IGNORE_INDEX] == 0).all()
        if (lab[-1] == IGNORE_INDEX).all():  # the bonnet row
            assert not ins[-1].any()
        # a rider and its two-wheeler are one object: consecutive ids, distinct instances, touching
        for k in ids:
            if lab[ins == k][0] != RIDER or k + 1 not in ids or lab[ins == k + 1][0] not in (MOTO, BIKE):
                continue
            grown = cv2.dilate((ins == k).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            assert (grown & (ins == k + 1)).any()
            n_riders += 1
    assert n_riders >= 1


def test_cityscapes_instance_encoding():
    lab = np.array([[CAR, CAR, PERSON, 0], [CAR, BIKE, PERSON, IGNORE_INDEX]], np.uint8)
    ins = np.array([[3, 3, 1, 0], [5, 2, 1, 0]], np.int32)
    got = cityscapes_instance_ids(lab, ins)
    assert got.dtype == np.uint16
    # cars 3 and 5 -> 26000, 26001; person 1 -> 24000; bicycle 2 -> 33000; stuff/unlabelled -> labelId
    assert got.tolist() == [[26000, 26000, 24000, 7], [26001, 33000, 24000, 0]]


# ------------------------------------------------------------------------------------------ on disk
@pytest.fixture(scope="module")
def benches(tmp_path_factory):
    root = tmp_path_factory.mktemp("streets_ins")
    gta = dict(size=(32, 64), n_source=2, n_target_train=3, n_target_val=1, seed=5)
    syn = dict(
        size=(32, 64), source_size=(40, 72), source_format="synthia", n_source=3, n_target_train=1, n_target_val=1
    )
    generate_streets(root / "gta", progress=False, workers=1, **gta)
    generate_streets(root / "syn", progress=False, workers=1, seed=6, **syn)
    return root, gta, {**syn, "seed": 6}


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two instance maps have the same instances (0 = none), up to renumbering."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]], 1), axis=0)
    return len(pairs) == len(np.unique(a[a > 0])) == len(np.unique(b[b > 0]))


def test_writer_cityscapes_instance_ids(benches):
    root, gta, _ = benches
    out = root / "gta"
    assert streets_exists(out, **gta)  # the instanceIds files do not count as labels
    labels = sorted((out / "target" / "gtFine").rglob("*_gtFine_labelIds.png"))
    assert len(labels) == gta["n_target_train"] + gta["n_target_val"]
    n_inst = 0
    for lp in labels:
        ip = lp.with_name(lp.name.replace("_labelIds.png", "_instanceIds.png"))
        raw = np.asarray(Image.open(ip)).astype(np.int64)
        label_ids = np.asarray(Image.open(lp)).astype(np.int64)
        assert raw.shape == label_ids.shape
        split = lp.parts[-3]
        city, seq = lp.name.split("_")[:2]
        cities = {"train": ("lindenau", "oakport"), "val": ("rivermark",)}[split]
        index = int(seq) * len(cities) + cities.index(city)
        _, lab, ins = render_scene(image_rng(5, f"target_{split}", index), "target", gta["size"], with_instances=True)
        # the labelId of every pixel agrees between the two files
        assert np.array_equal(np.where(raw >= 1000, raw // 1000, raw), label_ids)
        assert np.array_equal(raw[raw < 1000], label_ids[raw < 1000])
        # instance indices run 0..n-1 per class
        for c in np.unique(raw[raw >= 1000] // 1000):
            ks = np.unique(raw[(raw >= 1000) & (raw // 1000 == c)] % 1000)
            assert ks.tolist() == list(range(len(ks)))
        sem, got = read_cityscapes_instance_ids(ip)
        assert np.array_equal(sem, CITYSCAPES_LUT[label_ids]) and np.array_equal(sem, lab)
        assert _same_partition(got, ins)
        n_inst += len(np.unique(ins[ins > 0]))
    assert n_inst > 0
    # the GTA5-format source has no instances
    assert not list((out / "source").rglob("*instance*"))
    assert all(Image.open(p).mode == "P" for p in (out / "source" / "labels").iterdir())


def test_writer_synthia_instance_channel(benches):
    root, _, syn = benches
    out = root / "syn"
    assert streets_exists(out, **syn)
    for i in range(syn["n_source"]):
        path = out / "source" / "RAND_CITYSCAPES" / "GT" / "LABELS" / f"{i:07d}.png"
        _, lab, ins = render_scene(image_rng(6, "source", i), "source", syn["source_size"], with_instances=True)
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert raw.dtype == np.uint16 and np.array_equal(raw[..., 1], ins)
        sem, got = read_synthia_instance_ids(path)
        assert np.array_equal(sem, lab)
        assert _same_partition(got, ins)  # the reader renumbers (class, G) pairs
    assert len(list((out / "target" / "gtFine").rglob("*_instanceIds.png"))) == 2
