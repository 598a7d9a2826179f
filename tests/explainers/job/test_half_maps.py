"""Map tables store float16: maps beyond its range are scaled into it (a GPU run stored inf and
the population stage then failed), everything else is stored as a plain cast would."""

from __future__ import annotations

import numpy as np
import torch


def test_maps_in_range_are_stored_as_a_plain_cast():
    from cytotune.explainers.job.worker import as_half

    maps = torch.randn(5, 1, 8, 8) * 100
    assert torch.equal(as_half(maps), maps.to(torch.float16))


def test_a_map_beyond_float16_keeps_its_relative_values():
    from cytotune.explainers.job.worker import as_half

    big = torch.rand(1, 1, 8, 8) * 3e6 + 1.0
    small = torch.rand(1, 1, 8, 8)
    stored = as_half(torch.cat([big, small]))
    assert torch.isfinite(stored).all()
    assert float(stored[0].abs().max()) <= 32768
    relative = (big / big.max()).numpy()
    np.testing.assert_allclose(stored[0:1].float() / stored[0].float().max(), relative, rtol=2e-3)
    assert torch.equal(stored[1:], small.to(torch.float16))  # the other map is untouched
    # scaled by the power of two that brings it under 32768: exponents change, nothing else
    k = int(np.ceil(np.log2(float(big.max()) / 32768)))
    assert torch.equal(stored[0:1], (big * 2.0**-k).to(torch.float16))


def test_nan_becomes_zero_and_inf_the_largest_finite_value():
    from cytotune.explainers.job.worker import as_half

    maps = torch.tensor([[[1.0, float("nan")], [float("inf"), -float("inf")]]])
    assert as_half(maps).float().tolist() == [[[1.0, 0.0], [1.0, -1.0]]]


def test_an_old_table_with_inf_is_read_as_the_float16_maximum():
    """Tables written before the scaling hold inf: the overlays, the dashboard and the population
    stage read it as 65504 (NaN as 0) instead of failing or drawing nothing."""
    from cytotune.explainers.job.layout import decode_map

    stored = np.array([[[1.0, np.inf], [np.nan, -np.inf]]], np.float16)
    decoded = decode_map(stored.tobytes(), (1, 2, 2))
    assert decoded.tolist() == [[[1.0, 65504.0], [0.0, -65504.0]]]
    upsampled = decode_map(stored.tobytes(), (1, 2, 2), size=(4, 4))
    assert np.isfinite(upsampled).all()
