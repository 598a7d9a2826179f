"""channel_attribution and the pseudo-colour overlay (one image and batched)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cytotune.explainers.methods import channel_attribution, colormap, overlay
from cytotune.explainers.methods.channels import channel_colors, overlays


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


def _reference(
    image,
    cam,
    channels=None,
    colors=None,
    alpha=0.5,
    channel_names=None,
    cmap="inferno",
    percentiles=(1.0, 99.5),
):
    """overlay as it was written per image (before overlays): np.percentile of each channel,
    tints added on (H, W, 3), np.round."""
    img = np.asarray(image, float)
    idx = list(channels or range(len(img)))
    base = np.zeros((*img.shape[1:], 3))
    for c, rgb in zip(idx, channel_colors(idx, channel_names, colors)):
        lo, hi = np.percentile(img[c], percentiles)
        s = np.clip((img[c] - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(img[c])
        base += s[..., None] * rgb
    base = np.clip(base, 0.0, 1.0)
    if cam is not None:
        m = np.clip(np.asarray(cam, float), 0.0, None)
        m = m / m.max() if m.max() > 0 else m
        lut = colormap(cmap)
        w = alpha * m[..., None]
        base = base * (1 - w) + w * lut[np.round(m * (len(lut) - 1)).astype(int)]
    return np.round(base * 255).astype(np.uint8)


def _cams(kind, shape, rng):
    return {
        "none": None,
        "zero": np.zeros(shape),
        "negative": -rng.random(shape),
        "signed": rng.standard_normal(shape).astype(np.float32),
        "positive": rng.random(shape) * 1e3,
    }[kind]


@pytest.mark.parametrize("cams", ["none", "zero", "negative", "signed", "positive"])
@pytest.mark.parametrize("num", [1, 3])
def test_overlays_equal_overlay_per_image_bit_for_bit(num, cams):
    rng = np.random.default_rng(num)
    images = rng.random((7, num, 20, 18)).astype(np.float32)
    images[2, 0] = 0.25  # a constant channel: hi == lo, drawn black
    images[3] = rng.integers(100, 140, images[3].shape)  # few distinct values: ties
    maps = _cams(cams, (7, 20, 18), rng)
    names = ["DNA", "actin", "vimentin"][:num]
    for kw in (
        {},
        {"channel_names": names, "alpha": 0.6},
        {"channels": [num - 1], "colors": ["magenta"], "cmap": "viridis", "percentiles": (5, 95)},
        {"colors": {0: (255, 128, 0)}, "alpha": 1.0, "cmap": "jet", "percentiles": (0, 100)},
    ):
        batch = overlays(images, maps, **kw)
        assert batch.shape == (7, 20, 18, 3)
        assert batch.dtype == np.uint8
        one = [overlay(im, None if maps is None else maps[i], **kw) for i, im in enumerate(images)]
        assert np.array_equal(batch, np.stack(one))
        ref = [
            _reference(im, None if maps is None else maps[i], **kw) for i, im in enumerate(images)
        ]
        assert np.array_equal(batch, np.stack(ref))


def test_overlays_chunks_tensors_and_dtypes(monkeypatch):
    import cytotune.explainers.methods.channels as channels

    rng = np.random.default_rng(5)
    images = rng.integers(0, 4096, (9, 2, 8, 8)).astype(np.uint16)
    cams = rng.random((9, 1, 8, 8)).astype(np.float32)  # (N, 1, H, W) is accepted too
    whole = overlays(images, cams)
    monkeypatch.setattr(channels, "_CHUNK_PIXELS", 2 * 64)  # chunks of 2 images
    assert np.array_equal(overlays(images, cams), whole)
    assert np.array_equal(overlays(torch.from_numpy(images.astype(np.float32)), cams), whole)
    assert np.array_equal(overlays(images[:0]), np.zeros((0, 8, 8, 3), np.uint8))


def test_overlays_errors():
    images = np.random.default_rng(2).random((3, 2, 8, 8))
    with pytest.raises(ValueError, match=r"cams must be \(N, H, W\) = \(3, 8, 8\)"):
        overlays(images, np.ones((2, 8, 8)))
    with pytest.raises(ValueError, match=r"cams must be"):
        overlays(images, np.ones((3, 8, 4)))
    with pytest.raises(ValueError, match=r"images must be \(N, C, H, W\)"):
        overlays(images[0])
    with pytest.raises(ValueError, match="channel_names"):
        overlays(images, channel_names=["dna"])
    with pytest.raises(ValueError, match="alpha"):
        overlays(images, alpha=2.0)
