"""Instance maps through TrainTransform, and the panoptic training loader (balda.data.panoptic_loader)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from balda.config import Config
from balda.core.errors import ConfigError
from balda.data.loaders import TrainView
from balda.data.panoptic import panoptic_targets
from balda.data.panoptic_loader import PANOPTIC_KEYS, PanopticTrainView, build_panoptic_train_loader, panoptic_things
from balda.data.transforms import TrainTransform
from tests.data.fixtures import make_gta5
from tests.data.panoptic_fixtures import make_cityscapes_panoptic, make_synthia_panoptic


# ------------------------------------------------------------------------------------- transforms
def _maps(seed: int = 0, size=(16, 32)):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    label = np.repeat(np.repeat(rng.integers(0, 19, (size[0] // 2, size[1] // 4)), 2, 0), 4, 1).astype(np.uint8)
    return image, label, label.astype(np.int32) * 7 + 1  # an instance map that is a function of the label


@pytest.mark.parametrize(
    "kw",
    [
        dict(crop=(10, 20), flip=0.5, cat_max_ratio=0.75, jitter=0.3),
        dict(crop=(20, 40), resize=(14, 30), flip=0.5),  # padded crop after a resize
        dict(resize=(24, 40), flip=1.0),
        dict(flip=0.0),
    ],
)
def test_instances_follow_the_label_geometry(kw):
    image, label, ins = _maps()
    t = TrainTransform(**kw)
    for seed in range(6):
        rng_a, rng_b = np.random.default_rng(seed), np.random.default_rng(seed)
        img_a, lab_a, geom_a = t(image, label, rng_a, return_geometry=True)
        img_b, lab_b, ins_b, geom_b = t(image, label, rng_b, return_geometry=True, instances=ins)
        assert torch.equal(img_a, img_b) and torch.equal(lab_a, lab_b)
        assert torch.equal(geom_a["crop_box"], geom_b["crop_box"]) and geom_a["flip"] == geom_b["flip"]
        assert rng_a.random() == rng_b.random()  # the same number of draws
        assert ins_b.dtype == torch.long and ins_b.shape == lab_b.shape
        pad = lab_b == 255
        assert torch.equal(ins_b[~pad], lab_b[~pad] * 7 + 1) and (ins_b[pad] == 0).all()
    two = t(image, label, np.random.default_rng(0), instances=ins)
    assert len(two) == 3 and len(t(image, label, np.random.default_rng(0))) == 2


def test_transform_rejects_bad_instance_maps():
    image, label, ins = _maps()
    t = TrainTransform(crop=(8, 8))
    with pytest.raises(ValueError, match="semantic label"):
        t(image, None, np.random.default_rng(0), instances=ins)
    with pytest.raises(ValueError, match="differ in size"):
        t(image, label, np.random.default_rng(0), instances=ins[:, :-1])


# ----------------------------------------------------------------------------------------- loader
@pytest.fixture
def cfg(tmp_path):
    make_synthia_panoptic(tmp_path / "syn", ids=(0, 1, 2, 3))
    make_cityscapes_panoptic(tmp_path / "cs", cities={"aachen": 2, "bochum": 2})
    c = Config()
    d = c.data
    d.source.kind, d.source.root = "synthia", str(tmp_path / "syn")
    d.target.kind, d.target.root = "cityscapes", str(tmp_path / "cs")
    d.crop, d.batch_source, d.batch_target, d.num_workers, d.cat_max_ratio = [12, 20], 2, 3, 0, 1.0
    c.train.progress, c.train.seed = False, 3
    c.eval.view = "16"
    c.panoptic.sigma, c.panoptic.small_area = 2.0, 40
    return c


def _take(loader, k):
    return [next(loader) for _ in range(k)]


def _assert_same(b1, b2):
    for dom in b1:
        assert set(b1[dom]) == set(b2[dom])
        for key in b1[dom]:
            assert torch.equal(b1[dom][key], b2[dom][key]), (dom, key)


def test_batch_keys_shapes_and_dtypes(cfg):
    b = next(build_panoptic_train_loader(cfg))
    s, t = b["source"], b["target"]
    base = {"image", "label", "index", "crop_box", "flip"}
    assert set(s) == base | set(PANOPTIC_KEYS) and set(t) == base  # the unlabelled target as today
    B, h, w = 2, 12, 20
    assert s["image"].shape == (B, 3, h, w) and s["label"].shape == (B, h, w) and s["label"].dtype == torch.long
    for key in ("center", "center_weight", "offset_weight", "semantic_weight"):
        assert s[key].shape == (B, h, w) and s[key].dtype == torch.float32, key
    assert s["offset"].shape == (B, 2, h, w) and s["offset"].dtype == torch.float32
    assert s["instance"].shape == (B, h, w) and s["instance"].dtype == torch.long
    assert (t["label"] == 255).all() and t["image"].shape == (3, 3, h, w)
    # labelled target (oracle): the same keys as the source
    lb = next(build_panoptic_train_loader(cfg, with_target_labels=True))
    assert set(lb["target"]) == base | set(PANOPTIC_KEYS) and (lb["target"]["instance"] > 0).any()
    cfg.data.target.labelled = True
    assert set(next(build_panoptic_train_loader(cfg))["target"]) == base | set(PANOPTIC_KEYS)


def test_deterministic_for_seed_and_step(cfg):
    ahead = _take(build_panoptic_train_loader(cfg, with_target_labels=True), 4)
    again = _take(build_panoptic_train_loader(cfg, with_target_labels=True), 4)
    for b1, b2 in zip(ahead, again):
        _assert_same(b1, b2)
    resumed = build_panoptic_train_loader(cfg, start_step=2, with_target_labels=True)
    for b1, b2 in zip(ahead[2:], _take(resumed, 2)):
        _assert_same(b1, b2)
    cfg.train.seed = 4
    other = next(build_panoptic_train_loader(cfg, with_target_labels=True))
    assert not torch.equal(other["source"]["image"], ahead[0]["source"]["image"])


def test_targets_are_those_of_the_augmented_maps(cfg):
    loader = build_panoptic_train_loader(cfg, start_step=1, with_target_labels=True)
    batch = next(loader)
    pc, things = cfg.panoptic, panoptic_things(cfg)
    assert things == (11, 12, 13, 15, 17, 18)  # SYNTHIA-16: no truck, no train
    views = {"source": loader.source_view, "target": loader.target_view}
    for dom, part in batch.items():
        keys = loader._sampler(0 if dom == "source" else 1).batch_at(1)
        view = views[dom]
        for j, key in enumerate(keys):
            index, seed = key[0], key[1]
            assert part["index"][j] == index
            image, label, ins = view.dataset.load_panoptic(index)
            _, lab_t, ins_t = view.transform(image, label, np.random.default_rng(seed), instances=ins)
            assert torch.equal(part["label"][j], lab_t)
            keep = torch.as_tensor(np.isin(lab_t.numpy(), things))
            assert torch.equal(part["instance"][j], torch.where(keep, ins_t, torch.zeros_like(ins_t)))
            ref = panoptic_targets(
                part["label"][j],
                part["instance"][j],
                sigma=pc.sigma,
                small_area=pc.small_area,
                small_weight=pc.small_weight,
                weight_small=pc.weight_small,
                things=things,
            )
            for k in PANOPTIC_KEYS[:-1]:
                assert torch.equal(part[k][j], ref[k]), (dom, k)
    src = batch["source"]
    assert (src["center"].amax((1, 2)) == 1).any()  # a Gaussian peak in the crop
    assert ((src["semantic_weight"] == 3) == ((src["instance"] > 0) & (src["offset_weight"] > 0))).all()
    truck = src["label"] == 14  # SYNTHIA class 18: a thing only in the 19-class view
    assert truck.any() and (src["instance"][truck] == 0).all() and (src["offset_weight"][truck] == 0).all()


def test_nineteen_class_view_keeps_truck_instances(cfg):
    cfg.eval.view = "19"
    assert panoptic_things(cfg) == (11, 12, 13, 14, 15, 16, 17, 18)
    src = next(build_panoptic_train_loader(cfg))["source"]
    truck = src["label"] == 14
    assert truck.any() and (src["instance"][truck] > 0).all() and (src["offset_weight"][truck] == 1).all()


def test_rcs_and_errors(cfg, tmp_path):
    cfg.data.rcs.enabled, cfg.data.rcs.min_pixels, cfg.data.rcs.temperature = True, 10, 0.1
    loader = build_panoptic_train_loader(cfg)
    assert loader.rcs is not None and set(next(loader)["source"]) >= set(PANOPTIC_KEYS)
    cfg.data.rcs.enabled = False
    make_gta5(tmp_path / "gta")
    cfg.data.source.kind, cfg.data.source.root = "gta5", str(tmp_path / "gta")
    with pytest.raises(ConfigError, match="synthia"):
        build_panoptic_train_loader(cfg)
    cfg.data.source.kind, cfg.data.source.labelled = "synthia", False
    with pytest.raises(ConfigError, match="labelled"):
        build_panoptic_train_loader(cfg)


def test_view_needs_a_labelled_panoptic_dataset(cfg):
    from balda.data.datasets import build_dataset
    from balda.data.panoptic_datasets import build_panoptic_dataset

    t = TrainTransform(crop=(8, 8))
    with pytest.raises(TypeError):
        PanopticTrainView(build_dataset(cfg.data.source), t, things=(11,))
    unlabelled = build_panoptic_dataset(cfg.data.target)
    assert not unlabelled.labelled
    with pytest.raises(ValueError):
        PanopticTrainView(unlabelled, t, things=(11,))
    assert isinstance(TrainView(unlabelled, t)[0]["image"], torch.Tensor)
