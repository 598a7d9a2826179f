"""A quick look at one field's detections (PNG, Pillow only).

The searched channel in grey (percentile stretch), accepted cells outlined in green with their
crop window as a thin box, quarantined cells outlined in red; a caption counts both.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .finders import normalise

ACCEPTED_RGB = np.array([60, 230, 90], dtype=np.uint8)
QUARANTINED_RGB = np.array([255, 60, 50], dtype=np.uint8)
WINDOW_RGB = (90, 160, 255)


def outlines(labels: np.ndarray) -> np.ndarray:
    """Boolean (H, W): pixels of an object whose 4-neighbour belongs elsewhere."""
    edge = np.zeros(labels.shape, dtype=bool)
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    return edge & (labels > 0)


def field_montage(
    image: np.ndarray,
    labels: np.ndarray,
    cuts,
    path: str | Path,
    size: int,
    title: str = "",
    max_side: int = 1024,
) -> Path:
    """Write the detections of one field as a PNG (see :func:`montage_png` for the arguments)."""
    from cytotune.engine.io import atomic_write_bytes

    return atomic_write_bytes(path, montage_png(image, labels, cuts, size, title, max_side))


def montage_png(
    image: np.ndarray,
    labels: np.ndarray,
    cuts,
    size: int,
    title: str = "",
    max_side: int = 1024,
) -> bytes:
    """The detections of one field drawn as PNG bytes.

    Args:
        image: (H, W) channel the finder searched.
        labels: (H, W) instance labels.
        cuts: the field's :class:`~cytotune.engine.crop.extract.CellCut` list (accepted or not).
        size: crop side (drawn as the accepted cells' windows).
        title: caption text.
        max_side: larger fields are shrunk to this side.
    """
    import io

    from PIL import Image, ImageDraw

    grey = (normalise(image) * 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    bad = np.array([0] + [0] * int(labels.max()), dtype=bool)
    for cut in cuts:
        bad[cut.index] = cut.reason is not None
    edge = outlines(labels)
    rgb[edge & ~bad[labels]] = ACCEPTED_RGB
    rgb[edge & bad[labels]] = QUARANTINED_RGB
    canvas = Image.fromarray(rgb)
    draw = ImageDraw.Draw(canvas)
    for cut in cuts:
        if cut.reason is None:
            cy, cx = (int(round(c)) for c in cut.centroid)
            top, left = cy - size // 2, cx - size // 2
            draw.rectangle([left, top, left + size - 1, top + size - 1], outline=WINDOW_RGB)
    scale = min(1.0, max_side / max(canvas.size))
    if scale < 1.0:
        canvas = canvas.resize((int(canvas.width * scale), int(canvas.height * scale)))
    accepted = sum(c.reason is None for c in cuts)
    caption = f"{title}  cells {accepted} (green), quarantined {len(cuts) - accepted} (red)"
    framed = Image.new("RGB", (max(canvas.width, 360), canvas.height + 18), (16, 16, 16))
    framed.paste(canvas, (0, 18))
    ImageDraw.Draw(framed).text((4, 3), caption, fill=(230, 230, 230))
    buffer = io.BytesIO()
    framed.save(buffer, format="PNG")
    return buffer.getvalue()
