import numpy as np
import pytest
import torch

from balda.config import DataConfig, DatasetConfig
from balda.data.transforms import TrainTransform, hflip, normalize, photometric_jitter, random_crop, resize


def coord_image(h, w):
    """Channel 0 = row, channel 1 = column, channel 2 = 7: a crop reveals its offsets."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([yy, xx, np.full_like(yy, 7)], axis=-1).astype(np.uint8)


def test_resize_nearest_label_and_bilinear_image():
    lab = np.array([[1, 2], [3, 255]], np.uint8)
    img = np.full((2, 2, 3), 40, np.uint8)
    img2, lab2 = resize(img, lab, (4, 6))
    assert img2.shape == (4, 6, 3) and lab2.shape == (4, 6)
    np.testing.assert_array_equal(img2, 40)  # bilinear of a constant image is constant
    np.testing.assert_array_equal(lab2, np.repeat(np.repeat(lab, 2, axis=0), 3, axis=1))
    assert set(np.unique(resize(img, lab, (3, 5))[1])) <= {1, 2, 3, 255}  # never interpolates ids
    i3, l3 = resize(img, None, (1, 1))
    assert i3.shape == (1, 1, 3) and l3 is None
    with pytest.raises(ValueError, match="resize size"):
        resize(img, lab, (0, 3))


def test_crop_exact_offsets_pinned():
    img = coord_image(10, 12)
    lab = (np.arange(120) % 19).reshape(10, 12).astype(np.uint8)
    ci, cl = random_crop(img, lab, (4, 5), np.random.default_rng(3))
    ref = np.random.default_rng(3)
    y, x = int(ref.integers(0, 7)), int(ref.integers(0, 8))
    np.testing.assert_array_equal(ci, img[y : y + 4, x : x + 5])
    np.testing.assert_array_equal(cl, lab[y : y + 4, x : x + 5])
    # same seed, same crop; all offsets reachable
    np.testing.assert_array_equal(random_crop(img, lab, (4, 5), np.random.default_rng(3))[0], ci)
    offs = {tuple(random_crop(img, lab, (4, 5), np.random.default_rng(s))[0][0, 0, :2]) for s in range(400)}
    assert offs == {(a, b) for a in range(7) for b in range(8)}


def test_crop_pads_smaller_inputs():
    img = coord_image(3, 4) + 1
    lab = np.full((3, 4), 5, np.uint8)
    ci, cl = random_crop(img, lab, (5, 6), np.random.default_rng(0))
    assert ci.shape == (5, 6, 3) and cl.shape == (5, 6)
    np.testing.assert_array_equal(ci[:3, :4], img)
    assert (ci[3:] == 0).all() and (ci[:, 4:] == 0).all()
    np.testing.assert_array_equal(cl[:3, :4], 5)
    assert (cl[3:] == 255).all() and (cl[:, 4:] == 255).all()
    # only one dimension smaller: pad rows, crop columns
    ci, cl = random_crop(coord_image(3, 10), np.zeros((3, 10), np.uint8), (5, 4), np.random.default_rng(1))
    assert ci.shape == (5, 4, 3) and (cl[3:] == 255).all() and (cl[:3] == 0).all()


def test_cat_max_ratio_redraws():
    # 8x8 label: class 1 in the last column, class 0 elsewhere; crop 8x4 -> 5 positions, only the
    # last (x = 4) mixes classes (24 vs 8 pixels: max share 0.75 < 0.8).
    lab = np.zeros((8, 8), np.uint8)
    lab[:, 7] = 1
    img = coord_image(8, 8)

    def ok_rate(ratio):
        hits = 0
        for s in range(300):
            _, cl = random_crop(img, lab, (8, 4), np.random.default_rng(s), cat_max_ratio=ratio)
            hits += (cl == 1).any()
        return hits / 300

    assert abs(ok_rate(1.0) - 0.2) < 0.07
    # accepted after at most 11 draws: P = 1 - 0.8^11 = 0.914
    assert abs(ok_rate(0.8) - (1 - 0.8**11)) < 0.05
    # ratio 0.7 is never satisfiable: the crop is the 11th draw, still uniform
    assert abs(ok_rate(0.7) - 0.2) < 0.07
    # ignore pixels do not count: a crop of {0, 255} only holds one class
    lab2 = np.zeros((8, 8), np.uint8)
    lab2[:, :4] = 255
    for s in range(20):
        _, cl = random_crop(img, lab2, (8, 4), np.random.default_rng(s), cat_max_ratio=0.9)
        assert cl.shape == (8, 4)


def test_required_class_redraws_and_keeps_best():
    lab = np.zeros((16, 16), np.uint8)
    lab[6:10, 6:10] = 17  # a 4x4 block of class 17
    img = coord_image(16, 16)

    def counts(attempts, min_px, n=200):
        return np.array(
            [
                (
                    random_crop(
                        img,
                        lab,
                        (8, 8),
                        np.random.default_rng(s),
                        attempts=attempts,
                        required_class=17,
                        min_class_pixels=min_px,
                    )[1]
                    == 17
                ).sum()
                for s in range(n)
            ]
        )

    p = np.mean(counts(0, 16) >= 16)  # no re-draw: the block is fully inside for 5x5 of 9x9 offsets
    assert abs(p - 25 / 81) < 0.08
    c10 = counts(10, 16)
    assert abs(np.mean(c10 >= 16) - (1 - (56 / 81) ** 11)) < 0.04
    # min 17 is impossible: every draw is tried and the best one kept
    c_best = counts(10, 17)
    assert np.mean(c_best == 16) > 0.95
    # a crop with the class already satisfied is not re-drawn (same result as no requirement)
    a = random_crop(img, lab, (8, 8), np.random.default_rng(5), required_class=17, min_class_pixels=0)
    b = random_crop(img, lab, (8, 8), np.random.default_rng(5))
    np.testing.assert_array_equal(a[0], b[0])


def test_hflip_exact():
    img = coord_image(2, 3)
    lab = np.array([[1, 2, 3], [4, 5, 6]], np.uint8)
    fi, fl = hflip(img, lab)
    np.testing.assert_array_equal(fl, [[3, 2, 1], [6, 5, 4]])
    np.testing.assert_array_equal(fi[..., 1], [[2, 1, 0], [2, 1, 0]])
    assert fi.flags.c_contiguous and fl.flags.c_contiguous


def test_photometric_jitter():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    assert photometric_jitter(img, np.random.default_rng(1), 0.0) is img
    a = photometric_jitter(img, np.random.default_rng(1), 0.3)
    b = photometric_jitter(img, np.random.default_rng(1), 0.3)
    c = photometric_jitter(img, np.random.default_rng(2), 0.3)
    assert a.dtype == np.uint8 and a.shape == img.shape
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, img) and not np.array_equal(a, c)
    # grey stays grey (saturation and hue act on colour only)
    grey = np.repeat(rng.integers(0, 256, (6, 7, 1), dtype=np.uint8), 3, axis=2)
    for s in range(10):
        g = photometric_jitter(grey, np.random.default_rng(s), 0.5).astype(int)
        assert np.abs(g[..., 0] - g[..., 1]).max() <= 1 and np.abs(g[..., 0] - g[..., 2]).max() <= 1
    with pytest.raises(ValueError):
        photometric_jitter(img, rng, -1)


def test_normalize_closed_form():
    img = np.array([[[0, 128, 255]]], np.uint8)
    t = normalize(img, mean=[1, 2, 3], std=[2, 4, 5])
    assert t.dtype == torch.float32 and t.shape == (3, 1, 1)
    torch.testing.assert_close(t[:, 0, 0], torch.tensor([-0.5, 31.5, 50.4]))


def test_train_transform_deterministic_and_exact():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (12, 14, 3), dtype=np.uint8)
    lab = rng.integers(0, 19, (12, 14)).astype(np.uint8)
    tf = TrainTransform(crop=(6, 8), flip=0.5, jitter=0.2)
    a = tf(img, lab, np.random.default_rng(9))
    b = tf(img, lab, np.random.default_rng(9))
    assert a[0].shape == (3, 6, 8) and a[1].shape == (6, 8) and a[1].dtype == torch.long
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # full-size crop, flip always, no jitter: exactly the normalised mirrored image
    tf = TrainTransform(crop=(12, 14), flip=1.0, mean=[0, 0, 0], std=[1, 1, 1])
    x, y = tf(img, lab, np.random.default_rng(0))
    torch.testing.assert_close(x, torch.from_numpy(img[:, ::-1].astype(np.float32).transpose(2, 0, 1).copy()))
    assert torch.equal(y, torch.from_numpy(lab[:, ::-1].astype(np.int64).copy()))
    # no label -> all ignore, resize before crop
    tf = TrainTransform(crop=(4, 4), resize=(24, 28), flip=0.0)
    x, y = tf(img, None, np.random.default_rng(0))
    assert x.shape == (3, 4, 4) and (y == 255).all() and y.dtype == torch.long


def test_train_transform_from_config_and_validation():
    dc = DataConfig(crop=[4, 6], flip=0.25, cat_max_ratio=0.75, jitter=0.1)
    dc.rcs.max_crop_attempts = 3
    tf = TrainTransform.from_config(dc, DatasetConfig(resize=[8, 10]))
    assert (tf.crop, tf.resize, tf.flip, tf.cat_max_ratio, tf.jitter, tf.crop_attempts) == (
        (4, 6),
        (8, 10),
        0.25,
        0.75,
        0.1,
        3,
    )
    assert tf.mean == (123.675, 116.28, 103.53)
    with pytest.raises(ValueError, match="data.crop"):
        TrainTransform(crop=[4])
    with pytest.raises(ValueError, match="data.flip"):
        TrainTransform(crop=[4, 4], flip=2)


def test_geometry_locates_the_crop_and_flip():
    """crop_box (fractions of the resized image) and flip let a caller cut the same window out of a
    whole-image map: CPSL aligns its stored pseudo-labels this way."""
    import numpy as np
    import torch

    from balda.data.transforms import TrainTransform

    H, W = 20, 40
    yy, xx = np.mgrid[0:H, 0:W]
    label = (yy * W + xx).astype(np.int64) % 250
    image = np.zeros((H, W, 3), np.uint8)
    t = TrainTransform(crop=(8, 16), flip=0.5, mean=(0, 0, 0), std=(1, 1, 1))
    seen_flip = set()
    for seed in range(12):
        _, lab, geom = t(image, label.astype(np.uint8), np.random.default_rng(seed), return_geometry=True)
        y0, x0, y1, x1 = (geom["crop_box"] * torch.tensor([H, W, H, W])).round().long().tolist()
        ref = label[y0:y1, x0:x1]
        if bool(geom["flip"]):
            ref = ref[:, ::-1]
        seen_flip.add(bool(geom["flip"]))
        assert (y1 - y0, x1 - x0) == (8, 16)
        np.testing.assert_array_equal(lab.numpy(), ref)
    assert seen_flip == {True, False}
