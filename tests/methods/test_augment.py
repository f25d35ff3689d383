import math

import pytest
import torch
import torch.nn.functional as F

from balda.methods.augment import (
    _odd_kernel_size,
    classmix_masks,
    color_jitter,
    denormalize,
    gaussian_blur,
    mix,
    renormalize,
    step_generator,
)

from .conftest import MEAN, STD


def test_step_generator_is_a_function_of_seed_and_step():
    a = torch.rand(8, generator=step_generator(3, 7))
    assert torch.equal(a, torch.rand(8, generator=step_generator(3, 7)))
    assert not torch.equal(a, torch.rand(8, generator=step_generator(3, 8)))
    assert not torch.equal(a, torch.rand(8, generator=step_generator(4, 7)))
    assert not torch.equal(a, torch.rand(8, generator=step_generator(3, 7, salt=1)))


def _hand_labels():
    y = torch.full((3, 4, 6), 255, dtype=torch.long)
    y[0, :, 0:2] = 0
    y[0, :, 2:4] = 1
    y[0, :2, 4:6] = 2  # image 0: classes {0, 1, 2} + ignore -> choose 2
    y[1, :2] = 3
    y[1, 2:] = 4  # image 1: classes {3, 4} -> choose 1
    y[1, 3, 5] = 255
    # image 2: only ignore -> empty mask
    return y


def test_classmix_mask_is_union_of_exactly_the_chosen_classes_of_each_image():
    y = _hand_labels()
    seen = [set(), set()]
    for seed in range(40):
        m = classmix_masks(y, step_generator(seed, 0))
        assert m.shape == y.shape and m.dtype == torch.bool
        assert not m[y == 255].any()  # never ignore pixels
        assert not m[2].any()  # nothing labelled -> empty
        for b, n_expected in ((0, 2), (1, 1)):
            present = set(y[b][y[b] != 255].unique().tolist())
            chosen = set(y[b][m[b]].unique().tolist())
            assert chosen <= present and len(chosen) == n_expected  # (n + n % 2) / 2
            assert torch.equal(m[b], torch.isin(y[b], torch.tensor(sorted(chosen))))  # whole classes
            seen[b].add(frozenset(chosen))
    # per image, random: every admissible choice shows up over the seeds
    assert len(seen[0]) == 3 and len(seen[1]) == 2


def test_classmix_rounding_and_determinism():
    y = torch.arange(5).view(1, 1, 5).expand(2, 3, 5).clone()  # 5 classes -> (5 + 1) / 2 = 3
    g1, g2 = step_generator(0, 1), step_generator(0, 1)
    m1, m2 = classmix_masks(y, g1), classmix_masks(y, g2)
    assert torch.equal(m1, m2)
    assert (m1[:, 0].sum(-1) == 3).all()
    y1 = torch.full((1, 2, 2), 7)  # one class -> it is taken
    assert classmix_masks(y1, step_generator(0, 0)).all()


def test_mix_hand_example():
    m = torch.tensor([[[True, False], [False, True]]])
    a = torch.arange(8.0).view(1, 2, 2, 2)
    b = -torch.arange(8.0).view(1, 2, 2, 2)
    out = mix(m, a, b)
    assert torch.equal(out, torch.tensor([[[[0.0, -1.0], [-2.0, 3.0]], [[4.0, -5.0], [-6.0, 7.0]]]]))
    la, lb = torch.tensor([[[1, 2], [3, 4]]]), torch.tensor([[[9, 9], [9, 9]]])
    assert torch.equal(mix(m, la, lb), torch.tensor([[[1, 9], [9, 4]]]))


def _images(B=4, H=16, W=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(B, 3, H, W, generator=g) * 255 - MEAN) / STD


def test_denormalize_roundtrip():
    x = _images()
    assert torch.allclose(renormalize(denormalize(x, MEAN, STD), MEAN, STD), x, atol=1e-5)


def test_color_jitter_probability_and_range():
    x = _images()
    assert torch.equal(color_jitter(x, 0.2, 0.0, step_generator(0, 0), MEAN, STD), x)
    assert torch.equal(color_jitter(x, 0.0, 1.0, step_generator(0, 0), MEAN, STD), x)
    y = color_jitter(x, 0.2, 1.0, step_generator(0, 0), MEAN, STD)
    changed = (y - x).abs().flatten(1).amax(1) > 1e-3
    assert changed.all()
    rgb = denormalize(y, MEAN, STD)
    assert rgb.min() >= -1e-5 and rgb.max() <= 1 + 1e-5
    # same generator seed -> same output; per-image decisions with p = 0.5
    assert torch.equal(y, color_jitter(x, 0.2, 1.0, step_generator(0, 0), MEAN, STD))
    x8 = _images(B=32)
    z = color_jitter(x8, 0.2, 0.5, step_generator(1, 0), MEAN, STD)
    same = (z == x8).flatten(1).all(1)
    assert 0 < same.sum() < 32


def test_color_jitter_keeps_grey_images_grey():
    # saturation and hue act on chroma only: an achromatic image stays achromatic
    grey = torch.rand(3, 1, 8, 8) * 255
    x = (grey.expand(3, 3, 8, 8) - MEAN) / STD
    y = denormalize(color_jitter(x, 0.4, 1.0, step_generator(0, 0), MEAN, STD), MEAN, STD)
    assert torch.allclose(y[:, 0], y[:, 1], atol=1e-4) and torch.allclose(y[:, 1], y[:, 2], atol=1e-4)


def test_kernel_size_as_dacs():
    # floor(ceil(0.1 n) - 0.5 + ceil(0.1 n) % 2)
    for n in (16, 32, 100, 256, 510, 512, 513, 720, 1024):
        c = math.ceil(0.1 * n)
        assert _odd_kernel_size(n) == max(1, int(math.floor(c - 0.5 + c % 2)))
    assert _odd_kernel_size(512) == 51 and _odd_kernel_size(32) == 3


@pytest.mark.parametrize("reference", [None, 512, 20])
def test_gaussian_blur_matches_explicit_2d_convolution(reference):
    x = _images(B=3, H=40, W=30)
    y = gaussian_blur(x, step_generator(5, 2), p=1.0, reference=reference)
    u = torch.rand(3, 2, generator=step_generator(5, 2))
    # sigma ~ U[0.15, 1.15] scaled by sqrt(HW) / reference (DACS's range at 512 x 512 crops)
    s = 1.0 if reference is None else math.sqrt(40 * 30) / reference
    sigma = (0.15 + 1.0 * u[:, 1]) * s
    kh, kw = 3, 3
    for b in range(3):
        r = torch.arange(3.0) - 1
        k1 = torch.exp(-(r**2) / (2 * sigma[b] ** 2))
        k1 = k1 / k1.sum()
        k2 = (k1[:, None] * k1[None, :]).expand(3, 1, kh, kw)
        ref = F.conv2d(F.pad(x[b : b + 1], (1, 1, 1, 1), mode="reflect"), k2, groups=3)
        assert torch.allclose(y[b : b + 1], ref, atol=1e-5)
    assert (sigma >= 0.15 * s).all() and (sigma <= 1.15 * s).all()


def test_gaussian_blur_is_sized_to_the_crop():
    # the same draw blurs a 64 x 128 crop with 1/sqrt(512^2 / (64 * 128)) = 0.177 x DACS's sigma:
    # a crop-sized blur leaves a small crop far sharper than the absolute DACS range would
    x = _images(B=4, H=64, W=128)
    g = lambda: step_generator(1, 3)  # noqa: E731
    err_scaled = (gaussian_blur(x, g(), p=1.0) - x).abs().mean()
    err_abs = (gaussian_blur(x, g(), p=1.0, reference=None) - x).abs().mean()
    assert err_scaled < 0.5 * err_abs


def test_gaussian_blur_probability_and_constants():
    x = _images(B=32, H=32, W=32)
    assert torch.equal(gaussian_blur(x, step_generator(0, 0), p=0.0), x)
    y = gaussian_blur(x, step_generator(0, 0), p=0.5, reference=None)
    same = (y == x).flatten(1).all(1)
    assert 0 < same.sum() < 32
    c = torch.full((2, 3, 20, 20), 0.7)
    assert torch.allclose(gaussian_blur(c, step_generator(0, 0), p=1.0), c, atol=1e-6)
