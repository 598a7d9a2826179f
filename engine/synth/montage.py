"""Montage of a synthetic batch as a PNG (Pillow only): per class, a row of pseudo-coloured
crops and beneath it the same crops with the cell outline and the evidence mask overlaid."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Pseudo-colours (R, G, B) by channel name; unknown channels cycle through the fallback list.
COLOURS = {
    "dna": (0.25, 0.45, 1.0),
    "actin": (1.0, 0.2, 0.15),
    "vimentin": (0.2, 1.0, 0.3),
    "tubulin": (0.55, 1.0, 0.55),
}
FALLBACK = [(1.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0), (1.0, 1.0, 1.0)]
EVIDENCE_RGB = np.array([1.0, 0.1, 0.9])
OUTLINE_RGB = np.array([1.0, 0.9, 0.2])


def colourise(images: np.ndarray, channel_names, gamma: float = 0.8) -> np.ndarray:
    """Map uint16 crops (N, C, H, W) to RGB floats (N, H, W, 3) in [0, 1].

    Each crop's per-channel background (its 5th percentile) is removed, then every channel is
    scaled by one batch-wide high percentile, so brightness differences between cells remain.
    """
    x = images.astype(np.float32)
    x -= np.percentile(x, 5, axis=(2, 3), keepdims=True)
    top = np.percentile(x, 99.7, axis=(0, 2, 3), keepdims=True) + 1e-6
    x = np.clip(x / top, 0, 1) ** gamma
    rgb = np.zeros(x.shape[:1] + x.shape[2:] + (3,), dtype=np.float32)
    for c, name in enumerate(channel_names):
        colour = COLOURS.get(str(name).lower(), FALLBACK[c % len(FALLBACK)])
        rgb += x[:, c, :, :, None] * np.asarray(colour, dtype=np.float32)
    return np.clip(rgb, 0, 1)


def _outline(mask: np.ndarray) -> np.ndarray:
    m = mask.astype(bool)
    inner = m.copy()
    inner[1:] &= m[:-1]
    inner[:-1] &= m[1:]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    return m & ~inner


def overlay(rgb: np.ndarray, mask: np.ndarray, evidence: np.ndarray) -> np.ndarray:
    """Dimmed grey crop with the evidence mask in magenta and the cell outline in yellow."""
    grey = rgb.mean(axis=-1, keepdims=True) * 0.6
    out = np.repeat(grey, 3, axis=-1)
    ev = evidence.astype(bool)[..., None]
    out = np.where(ev, 0.45 * out + 0.55 * EVIDENCE_RGB, out)
    return np.where(_outline(mask)[..., None], OUTLINE_RGB, out)


def montage(batch, path: str | Path, per_class: int = 8, scale: int = 2) -> Path:
    """Write a PNG montage of ``batch`` (a :class:`SynthBatch`): two rows per class.

    Args:
        batch: the cells; the first ``per_class`` cells of each class are shown.
        path: output PNG path.
        per_class: crops per row.
        scale: integer upscaling of each crop (nearest neighbour).

    Returns:
        The written path.
    """
    from PIL import Image, ImageDraw

    rgb = colourise(batch.images, batch.channel_names)
    size = batch.images.shape[-1] * scale
    pad, left, top = 4, 120, 26
    rows = []
    for name in batch.classes:
        picks = [i for i, label in enumerate(batch.labels) if label == name][:per_class]
        rows.append((name, picks))
    width = left + per_class * (size + pad)
    height = top + len(rows) * 2 * (size + pad) + pad * len(rows)
    canvas = Image.new("RGB", (width, height), (16, 16, 16))
    draw = ImageDraw.Draw(canvas)
    channels = ", ".join(batch.channel_names)
    draw.text(
        (pad, 6),
        f"{batch.task}  ({channels});  lower rows: evidence (magenta), cell outline",
        fill=(230, 230, 230),
    )
    y = top
    for name, picks in rows:
        draw.text((pad, y + size // 2 - 6), name, fill=(240, 240, 240))
        draw.text((pad, y + size + pad + size // 2 - 6), "evidence", fill=(170, 170, 170))
        for col, i in enumerate(picks):
            x = left + col * (size + pad)
            tiles = (rgb[i], overlay(rgb[i], batch.masks[i], batch.evidence[i]))
            for r, tile in enumerate(tiles):
                img = Image.fromarray((tile * 255).astype(np.uint8)).resize(
                    (size, size), Image.NEAREST
                )
                canvas.paste(img, (x, y + r * (size + pad)))
        y += 2 * (size + pad) + pad
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
