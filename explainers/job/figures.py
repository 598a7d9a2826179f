"""PNG helpers for the job's artefacts: heatmaps, diverging maps, panels and mosaics."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from cytotune.engine.io import atomic_path
from PIL import Image

from ..methods.channels import colormap

# zlib level of the job's PNGs: level 1 encodes several times faster than PIL's default 6 for
# files about a third larger (the population stage spent a quarter of its time encoding)
PNG_LEVEL = 1


def save_png(path: str | Path, rgb: np.ndarray, scale: int = 1) -> Path:
    """Write an (H, W, 3) uint8 image atomically, optionally enlarged (nearest) by ``scale``."""
    image = Image.fromarray(np.asarray(rgb, dtype=np.uint8))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", compress_level=PNG_LEVEL)
    return Path(path)


def heatmap(values: np.ndarray, cmap: str = "inferno") -> np.ndarray:
    """(H, W) values scaled by their maximum (negatives as 0) -> (H, W, 3) uint8."""
    m = np.clip(np.asarray(values, dtype=float), 0, None)
    m = m / m.max() if m.max() > 0 else m
    lut = colormap(cmap)
    return np.round(lut[np.round(m * (len(lut) - 1)).astype(int)] * 255).astype(np.uint8)


def diverging(r: np.ndarray) -> np.ndarray:
    """Correlations in [-1, 1] -> blue (negative), white (0), red (positive) uint8 RGB."""
    r = np.clip(np.nan_to_num(np.asarray(r, dtype=float)), -1, 1)[..., None]
    white, red, blue = np.ones(3), np.array([0.8, 0.05, 0.1]), np.array([0.1, 0.2, 0.8])
    rgb = np.where(r >= 0, white * (1 - r) + red * r, white * (1 + r) - blue * r)
    return np.round(rgb * 255).astype(np.uint8)


def grid(tiles: Sequence[np.ndarray], columns: int, pad: int = 2, fill: int = 255) -> np.ndarray:
    """Tiles of equal size (H, W, 3) into one mosaic, row-major, with ``pad`` pixel gutters."""
    if not tiles:
        raise ValueError("grid needs at least one tile")
    h, w = tiles[0].shape[:2]
    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    out = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), fill, np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        out[y : y + h, x : x + w] = tile
    return out


def box(
    rgb: np.ndarray, top: int, left: int, bottom: int, right: int, color=(0, 255, 255)
) -> np.ndarray:
    """Draw a one-pixel rectangle (inclusive top/left, exclusive bottom/right) on a copy."""
    out = rgb.copy()
    h, w = out.shape[:2]
    top, left = max(0, top), max(0, left)
    bottom, right = min(h, bottom), min(w, right)
    if bottom <= top or right <= left:
        return out
    out[top, left:right] = out[bottom - 1, left:right] = color
    out[top:bottom, left] = out[top:bottom, right - 1] = color
    return out
