"""channel_attribution and the pseudo-colour overlay."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cytotune.explainers.methods import channel_attribution, colormap, overlay


def test_channel_attribution_shares():
    attr = torch.zeros(2, 3, 2, 2)
    attr[0, 0] = 1.0
    attr[0, 2, 0, 0] = -3.0
    shares = channel_attribution(attr)
    torch.testing.assert_close(shares, torch.tensor([[4 / 7, 0.0, 3 / 7], [0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        channel_attribution(attr[0])


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return rng.random((4, 16, 12)).astype(np.float32)  # (C, H, W)


def test_overlay_shape_dtype_and_zero_map_is_plain_composite(image):
    plain = overlay(image)
    assert plain.shape == (16, 12, 3)
    assert plain.dtype == np.uint8
    np.testing.assert_array_equal(overlay(image, np.zeros((16, 12))), plain)
    cam = np.zeros((16, 12))
    cam[4:8, 4:8] = 1.0
    blended = overlay(image, cam, alpha=0.5)
    changed = np.any(blended != plain, axis=-1)
    assert changed[4:8, 4:8].all()
    assert not changed[cam == 0].any()


def test_overlay_pseudo_colours_by_stain_name():
    img = np.zeros((3, 4, 4), np.float32)
    img[0, :2] = 1.0  # dna in the top half
    img[1, 2:] = 1.0  # actin in the bottom half
    names = ["DNA", "actin", "vimentin"]
    rgb = overlay(img, channel_names=names, percentiles=(0, 100))
    np.testing.assert_array_equal(rgb[0, 0], [0, 76, 255])  # DNA blue
    np.testing.assert_array_equal(rgb[3, 0], [255, 0, 0])  # actin red
    only_actin = overlay(img, channels=["actin"], channel_names=names, percentiles=(0, 100))
    np.testing.assert_array_equal(only_actin[0, 0], [0, 0, 0])
    custom = overlay(img, channels=[0], colors=["magenta"], percentiles=(0, 100))
    np.testing.assert_array_equal(custom[0, 0], [255, 0, 255])


def test_overlay_any_channel_count_and_errors():
    one = np.random.default_rng(1).random((1, 8, 8))
    assert overlay(one, torch.rand(1, 8, 8)).shape == (8, 8, 3)
    with pytest.raises(ValueError, match="pass channel_names"):
        overlay(one, channels=["dna"])
    with pytest.raises(ValueError, match="cam must be"):
        overlay(one, np.ones((4, 4)))
    with pytest.raises(ValueError, match="unknown colormap"):
        overlay(one, np.ones((8, 8)), cmap="rainbow")


def test_colormaps():
    for name in ("inferno", "viridis", "jet", "gray"):
        lut = colormap(name)
        assert lut.shape == (256, 3)
        assert lut.min() >= 0
        assert lut.max() <= 1
    np.testing.assert_allclose(colormap("inferno")[[0, -1]] * 255, [[0, 0, 4], [252, 255, 164]])
    np.testing.assert_allclose(colormap("jet")[[0, -1]], [[0, 0, 0.5], [0.5, 0, 0]])
