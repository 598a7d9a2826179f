"""Readable tiles: robust scaling against numpy, map hues that avoid the channel tints, the
colour bar and the three display modes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from cytotune.explainers.job.tiles import (
    BAR_W,
    map_hue,
    render_tile,
    scale_map,
    screen_scale,
    with_bar,
)
from cytotune.explainers.methods.channels import channel_colors
from PIL import Image
from scipy import ndimage


def test_scale_map_clips_at_the_percentile_of_positive_pixels():
    rng = np.random.default_rng(0)
    plane = rng.exponential(1.0, (20, 20))
    plane[3, 4] = 500.0  # one hot pixel must not blank the rest
    plane[0, :5] = -2.0
    m, top = scale_map(plane, 99.0)
    assert top == pytest.approx(np.percentile(plane[plane > 0], 99.0))
    assert m.max() == 1.0
    assert m.min() == 0.0
    assert (m[0, :5] == 0).all()
    assert np.median(m) > 0.05  # with max scaling it would be ~0.002
    smooth, _ = scale_map(plane, 100.0, smooth=1.0)
    want = np.clip(ndimage.gaussian_filter(plane.astype(np.float32), 1.0, mode="nearest"), 0, None)
    np.testing.assert_allclose(smooth, want / want.max(), rtol=1e-5)
    assert scale_map(np.zeros((4, 4)))[1] == 0.0


def test_map_hue_is_far_from_every_channel_tint():
    dna_actin_vimentin = channel_colors([0, 1, 2], ["dna", "actin", "vimentin"])
    assert map_hue(dna_actin_vimentin) == "white"
    assert map_hue(channel_colors([0], ["actin"])) == "cyan"  # red's opposite
    assert map_hue([]) == "white"


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_render_tile_modes_sizes_and_colour_bar():
    rng = np.random.default_rng(1)
    crop = rng.random((3, 16, 16)).astype(np.float32)
    cam = np.zeros((1, 4, 4), np.float32)
    cam[0, 1, 2] = 1.0
    names = ["dna", "actin", "vimentin"]
    side = _png(render_tile(crop, cam, "gradcam", channel_names=names))
    blend = _png(render_tile(crop, cam, "gradcam", channel_names=names, mode="blend"))
    contour = _png(render_tile(crop, cam, "gradcam", channel_names=names, mode="contour"))
    k = screen_scale(16)
    assert k == 5  # panels at least 72 px tall; 3 screen px a pixel for crops of 24 px and more
    assert side.shape == (16 * k, 2 * 16 * k + 4 + BAR_W, 3)
    assert blend.shape == contour.shape == (16 * k, 16 * k + BAR_W, 3)
    assert not np.array_equal(blend, contour)
    # the bar: its ramp runs from black (bottom) to the map's hue (white here) at the top
    bar = side[:, 2 * 16 * k + 4 :]
    column = bar[:, 10]
    assert column[-10].sum() < 60
    assert (column[10] > 225).all()
    assert len(set(column[10])) == 1
    alone = _png(render_tile(None, cam, "gradcam"))
    assert alone.shape == (72, 72 + BAR_W, 3)  # a 4x4 map alone, enlarged to 72 px
    for bad in ({"mode": "nope"}, {"cmap": "jet"}, {"percentile": 10}, {"smooth": 9}):
        with pytest.raises(ValueError):
            render_tile(crop, cam, "gradcam", **bad)


def test_with_bar_adds_a_labelled_bar():
    rgb = np.zeros((10, 20, 3), np.uint8)
    out = with_bar(rgb, np.linspace(0, 1, 256)[:, None].repeat(3, 1), (-1, 1), "r", scale=4)
    assert out.shape[1] == 80 + 4 + BAR_W
    assert out.shape[0] >= 40


def test_colour_bars_drawn_in_threads_equal_bars_drawn_alone():
    """The bars' fonts are per thread and their labels drawn once: bars drawn by 4 threads at
    once equal the same bars drawn one by one, and each label stays with its own bar."""
    from concurrent.futures import ThreadPoolExecutor

    from cytotune.explainers.job.tiles import DIVERGING_LUT, colour_bar

    asks = [
        ((0.0, 1.0 + i), 120 + 8 * (i % 2), f"label {i % 3}\n(units)", i % 2 == 0)
        for i in range(12)
    ]
    alone = [np.asarray(colour_bar(DIVERGING_LUT, *ask)) for ask in asks]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda ask: np.asarray(colour_bar(DIVERGING_LUT, *ask)), asks))
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(alone[0][:, -20:], alone[1][:, -20:])  # labels 0 and 1 differ
