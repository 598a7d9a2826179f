"""Population maps against direct numpy / scipy computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cytotune.explainers.population import (
    GeometricMeanAccumulator,
    PerClassGeometricMean,
    channel_maps,
    compare_population_maps,
    correlation_summary,
    patch_correlation,
)
from scipy import stats

EPS = 1e-6


def direct_gmean(x, w=None, eps=EPS):
    w = np.ones(len(x)) if w is None else np.asarray(w, dtype=np.float64)
    logs = np.log(x.astype(np.float64) + eps)
    return np.exp((w[:, None, None, None] * logs).sum(0) / w.sum()) - eps


@pytest.fixture
def maps():
    rng = np.random.default_rng(0)
    x = rng.random((13, 2, 5, 6))
    x[x < 0.2] = 0.0  # zeros exercise eps
    return x


def test_gmean_unweighted_equals_direct(maps):
    acc = GeometricMeanAccumulator(maps.shape[1:])
    acc.update(maps)
    np.testing.assert_allclose(acc.result(), direct_gmean(maps), rtol=1e-12, atol=1e-15)
    assert acc.count == 13


def test_gmean_weighted_streaming_equals_one_shot(maps):
    w = np.random.default_rng(1).random(len(maps))
    acc = GeometricMeanAccumulator(maps.shape[1:])
    for lo, hi in [(0, 4), (4, 5), (5, 13)]:
        acc.update(torch.as_tensor(maps[lo:hi]), torch.as_tensor(w[lo:hi]))
    np.testing.assert_allclose(acc.result(), direct_gmean(maps, w), rtol=1e-10, atol=1e-14)
    one = GeometricMeanAccumulator(maps.shape[1:])
    one.update(maps, w)
    np.testing.assert_allclose(acc.result(), one.result(), rtol=1e-12, atol=1e-15)


def test_gmean_merge_and_constant_input(maps):
    a, b = GeometricMeanAccumulator(maps.shape[1:]), GeometricMeanAccumulator(maps.shape[1:])
    a.update(maps[:7])
    b.update(maps[7:])
    np.testing.assert_allclose(a.merge(b).result(), direct_gmean(maps), rtol=1e-12, atol=1e-15)
    const = GeometricMeanAccumulator((3,))
    const.update(np.full((4, 3), 0.25))
    np.testing.assert_allclose(const.result(), 0.25, rtol=1e-12)


def test_gmean_rejects_bad_input():
    acc = GeometricMeanAccumulator((2, 2))
    with pytest.raises(ValueError, match="non-negative"):
        acc.update(-np.ones((1, 2, 2)))
    with pytest.raises(ValueError, match="expected"):
        acc.update(np.ones((1, 3, 2)))
    with pytest.raises(ValueError, match="weights"):
        acc.update(np.ones((2, 2, 2)), weights=[1.0])
    with pytest.raises(ValueError, match="update"):
        acc.result()


def test_per_class_gmean(maps):
    labels = np.array(["a", "b", "a", "a", "b", "b", "a", "a", "b", "a", "a", "b", "a"])
    w = np.linspace(0.5, 2.0, len(maps))
    acc = PerClassGeometricMean(["a", "b", "c"], maps.shape[1:])
    acc.update(maps[:6], labels[:6], w[:6])
    acc.update(maps[6:], labels[6:], w[6:])
    res = acc.results()
    assert set(res) == {"a", "b"}  # "c" never seen
    for c in "ab":
        sel = labels == c
        np.testing.assert_allclose(res[c], direct_gmean(maps[sel], w[sel]), rtol=1e-10)
    with pytest.raises(ValueError, match="not in classes"):
        acc.update(maps[:1], ["z"])


def test_channel_maps():
    x = np.arange(2 * 3 * 2 * 2, dtype=float).reshape(2, 3, 2, 2)
    np.testing.assert_array_equal(channel_maps(x, [0, 2], "sum"), x[:, [0]] + x[:, [2]])
    assert channel_maps(x).shape == (2, 3, 2, 2)
    with pytest.raises(ValueError, match="combine"):
        channel_maps(x, combine="mean")


def direct_patch_correlation(a, b, radius):
    h, w = a.shape
    out = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            wa = a[max(i - radius, 0) : i + radius + 1, max(j - radius, 0) : j + radius + 1]
            wb = b[max(i - radius, 0) : i + radius + 1, max(j - radius, 0) : j + radius + 1]
            if np.ptp(wa) == 0 or np.ptp(wb) == 0:
                continue
            out[i, j] = stats.pearsonr(wa.ravel(), wb.ravel())[0]
    return out


@pytest.mark.parametrize("radius", [1, 2, 3])
def test_patch_correlation_equals_direct(radius):
    rng = np.random.default_rng(radius)
    a = rng.random((9, 11))
    b = 0.5 * a + rng.random((9, 11))
    np.testing.assert_allclose(
        patch_correlation(a, b, radius), direct_patch_correlation(a, b, radius), atol=1e-10
    )


def test_patch_correlation_constant_windows_and_batch():
    rng = np.random.default_rng(5)
    a = rng.random((8, 8)) + 10.0  # offset: cancellation must not leak through
    a[:4, :4] = 3.0  # constant block -> windows fully inside it are undefined -> 0
    b = rng.random((8, 8))
    r = patch_correlation(a, b, 1)
    np.testing.assert_allclose(r, direct_patch_correlation(a, b, 1), atol=1e-9)
    assert r[1, 1] == 0.0
    assert r[0, 0] == 0.0
    batch = patch_correlation(np.stack([a, b]), np.stack([b, a]), 1)
    np.testing.assert_allclose(batch[0], r, atol=1e-12)
    np.testing.assert_allclose(patch_correlation(a, a, 2)[4:, 4:], 1.0, atol=1e-9)


def test_correlation_summary_hand_example():
    r = np.array([[0.9, 0.6, 0.5], [-0.7, -0.5, 0.0]])
    s = correlation_summary(r, threshold=0.5)
    assert s["positive_ratio"] == pytest.approx(2 / 6)  # 0.5 itself is not > 0.5
    assert s["negative_ratio"] == pytest.approx(1 / 6)
    assert s["mean_r"] == pytest.approx(0.8 / 6)
    mask = np.array([[1, 0, 0], [1, 1, 0]], dtype=bool)
    s = correlation_summary(r, threshold=0.5, mask=mask)
    assert (s["positive_ratio"], s["negative_ratio"], s["n_pixels"]) == (1 / 3, 1 / 3, 3)
    with pytest.raises(ValueError, match="mask shape"):
        correlation_summary(r, mask=np.ones((3, 3)))


def test_compare_population_maps():
    a = np.random.default_rng(3).random((10, 10))
    out = compare_population_maps(a, 2 * a + 1)
    assert out["positive_ratio"] == 1.0
    assert out["negative_ratio"] == 0.0
    assert out["r"].shape == (10, 10)
