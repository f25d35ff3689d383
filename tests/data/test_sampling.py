import numpy as np
import pytest
from scipy import stats

from balda.data.sampling import RareClassSampler


def example_counts():
    # 5 images, 4 classes; class 3 never exceeds min_pixels=10 in any image
    return np.array(
        [
            [100, 50, 0, 5],
            [200, 0, 20, 10],
            [50, 11, 0, 0],
            [0, 0, 30, 2],
            [80, 20, 0, 0],
        ],
        dtype=np.int64,
    )


def test_probabilities_closed_form():
    counts = example_counts()
    T = 0.1
    rcs = RareClassSampler(counts, temperature=T, min_pixels=10)
    f = counts.sum(0) / counts.sum()
    np.testing.assert_allclose(rcs.class_freq, f)
    logits = (1 - f[:3]) / T
    p = np.exp(logits) / np.exp(logits).sum()
    np.testing.assert_allclose(rcs.class_probs, np.r_[p, 0.0], rtol=1e-12)
    assert rcs.class_probs[2] > rcs.class_probs[1] > rcs.class_probs[0]  # rarer -> likelier
    assert rcs.images_of(0).tolist() == [0, 1, 2, 4]
    assert rcs.images_of(1).tolist() == [0, 2, 4]  # strictly more than min_pixels
    assert rcs.images_of(2).tolist() == [1, 3]
    assert rcs.images_of(3).tolist() == []


def test_default_temperature_is_stable():
    counts = np.array([[10**9, 5000, 4000]], dtype=np.int64)
    rcs = RareClassSampler(counts)  # T = 0.01: exp((1-f)/T) would overflow without the max shift
    assert np.isfinite(rcs.class_probs).all() and abs(rcs.class_probs.sum() - 1) < 1e-12


def test_sampling_statistics():
    counts = example_counts()
    rcs = RareClassSampler(counts, temperature=0.1, min_pixels=10)
    rng = np.random.default_rng(1234)
    n = 20000
    draws = np.array([rcs.sample(rng) for _ in range(n)])
    cls, img = draws[:, 0], draws[:, 1]
    obs = np.bincount(cls, minlength=4)
    assert obs[3] == 0
    chi = stats.chisquare(obs[:3], n * rcs.class_probs[:3])
    assert chi.pvalue > 1e-3
    # each drawn image holds > min_pixels of its class, and images are uniform within a class
    assert (counts[img, cls] > 10).all()
    for c in range(3):
        sel = img[cls == c]
        imgs = rcs.images_of(c)
        obs_i = np.array([(sel == i).sum() for i in imgs])
        assert obs_i.sum() == len(sel)
        assert stats.chisquare(obs_i).pvalue > 1e-3


def test_sample_deterministic_under_seed():
    rcs = RareClassSampler(example_counts(), temperature=0.1, min_pixels=10)
    a = [rcs.sample(np.random.default_rng([1, 2, s])) for s in range(50)]
    b = [rcs.sample(np.random.default_rng([1, 2, s])) for s in range(50)]
    assert a == b and all(isinstance(c, int) and isinstance(i, int) for c, i in a)


def test_invalid_inputs():
    with pytest.raises(ValueError, match="min_pixels"):
        RareClassSampler(np.ones((3, 4)), min_pixels=10)
    with pytest.raises(ValueError, match="temperature"):
        RareClassSampler(example_counts(), temperature=0)
    with pytest.raises(ValueError, match="N, K"):
        RareClassSampler(np.ones(4))
