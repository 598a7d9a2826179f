"""Readable attribution tiles: crop | map side by side, blended or as contours, always with a
colour bar that names its units.

A map is reduced to one (H, W) plane (CAMs as they are; gradient methods as |attribution|
summed over the shown channels), optionally smoothed (pixel-level gradients are speckle), then
scaled robustly: values are clipped at a high percentile (default 99.5) so a few extreme pixels
do not turn the rest of the map black. The map's colours never share a hue with the channels
shown: ``auto`` picks, from colour-blind-safe candidates, the single hue farthest from every
channel tint and ramps from black to it; fixed LUTs (``inferno``, ``viridis``, ...) are only
used in the side-by-side panel, where nothing mixes with them.
"""

from __future__ import annotations

import functools
import io
import threading

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from ..methods.channels import channel_colors, colormap, overlay
from .figures import PNG_LEVEL, diverging

MODES = ("side", "blend", "contour")
MAP_COLORMAPS = ("auto", "inferno", "viridis", "gray")
# single hues a map may take in blend/contour modes (white first: distinct from any tint)
HUES = {
    "white": (1.0, 1.0, 1.0),
    "magenta": (1.0, 0.2, 1.0),
    "cyan": (0.2, 1.0, 1.0),
    "yellow": (1.0, 0.95, 0.2),
    "orange": (1.0, 0.55, 0.0),
}
UNITS = {
    "gradcam": "Grad-CAM, ReLU (a.u.)",
    "gradcam++": "Grad-CAM++, ReLU (a.u.)",
    "layercam": "LayerCAM, ReLU (a.u.)",
    "saliency": "|d score / d pixel|",
    "smoothgrad": "|gradient|, mean of noisy copies",
    "integrated_gradients": "|contribution| (logit units)",
    "inputxgradient": "|input x gradient| (logit units)",
    "occlusion": "score drop when occluded",
}
SCALE = 3  # screen pixels per crop pixel (more for small maps: panels at least MIN_SIDE tall)
MIN_SIDE = 72


def screen_scale(height: int) -> int:
    return max(SCALE, -(-MIN_SIDE // max(int(height), 1)))


BAR_W = 84


def units(method: str) -> str:
    return UNITS.get(method, f"{method} attribution (a.u.)")


def reduce_map(amap: np.ndarray, channels=None) -> np.ndarray:
    """(C, H, W) or (1, H, W) -> (H, W): the CAM, or |attribution| summed over ``channels``."""
    if amap.shape[0] == 1:
        return amap[0]
    picked = amap[list(channels)] if channels else amap
    return np.abs(picked).sum(0)


def scale_map(plane: np.ndarray, percentile: float = 99.5, smooth: float = 0.0):
    """``(values in [0, 1], top)``: smoothed (Gaussian ``smooth`` px), negatives to 0, divided
    by the ``percentile``-th value of the positive pixels (clipped at 1); ``top`` is that value in
    the map's own units (what the colour bar's top means)."""
    plane = np.asarray(plane, dtype=np.float32)
    if smooth > 0:
        plane = ndimage.gaussian_filter(plane, smooth, mode="nearest")
    plane = np.clip(plane, 0.0, None)
    positive = plane[plane > 0]
    top = float(np.percentile(positive, percentile)) if positive.size else 0.0
    if top <= 0:
        return np.zeros_like(plane), 0.0
    return np.clip(plane / top, 0.0, 1.0), top


def map_hue(tints) -> str:
    """The HUES name farthest (minimum RGB distance) from every channel tint shown."""
    tints = [np.asarray(t, float) for t in tints]
    if not tints:
        return "white"
    return max(HUES, key=lambda h: min(np.linalg.norm(np.asarray(HUES[h]) - t) for t in tints))


def lut_for(cmap: str, tints) -> tuple[np.ndarray, str]:
    """(256, 3) LUT and the name shown: ``auto`` = black -> the hue farthest from the tints."""
    if cmap == "auto":
        hue = map_hue(tints)
        return np.linspace(0, 1, 256)[:, None] * np.asarray(HUES[hue])[None], hue
    return colormap(cmap), cmap


_FONTS = threading.local()  # a FreeType face is not shared between threads


def _font(size: int):
    fonts = _FONTS.__dict__.setdefault("by_size", {})
    if size not in fonts:
        try:
            fonts[size] = ImageFont.load_default(size=size)
        except TypeError:  # Pillow < 10.1
            fonts[size] = ImageFont.load_default()
    return fonts[size]


@functools.lru_cache(maxsize=64)
def _label_image(label: str) -> Image.Image:
    """``label`` rendered to run up a bar's right edge (drawn once: every tile of a method
    repeats it; read-only, so threads share it)."""
    words = _font(10)
    box = ImageDraw.Draw(Image.new("RGB", (1, 1))).multiline_textbbox(
        (0, 0), label, font=words, spacing=1
    )
    text = Image.new("RGB", (box[2] + 2, box[3] + 2), "white")
    ImageDraw.Draw(text).multiline_text((0, 0), label, fill=(50, 50, 50), font=words, spacing=1)
    return text.rotate(90, expand=True)


def _fmt(v: float) -> str:
    return f"{v:.2g}" if v < 0.01 or v >= 1000 else f"{v:.3g}"


def colour_bar(lut: np.ndarray, top, height: int, label: str, clipped: bool) -> Image.Image:
    """A vertical bar (0 at the bottom, ``top`` at the top; or a ``(low, high)`` range) with
    three ticks and a label."""
    low, top = (0.0, float(top)) if np.isscalar(top) else (float(top[0]), float(top[1]))
    bar = Image.new("RGB", (BAR_W, height), "white")
    draw = ImageDraw.Draw(bar)
    y0, y1, x0, x1 = 8, height - 8, 4, 16
    ramp = lut[np.linspace(len(lut) - 1, 0, y1 - y0).astype(int)]  # top = high values
    strip = (np.repeat(ramp[:, None], x1 - x0, 1) * 255).astype(np.uint8)
    bar.paste(Image.fromarray(strip), (x0, y0))
    draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=(90, 90, 90))
    font = _font(10)
    for frac in (0.0, 0.5, 1.0):
        y = int(y1 - 1 - frac * (y1 - y0 - 1))
        draw.line([x1, y, x1 + 3, y], fill=(60, 60, 60))
        value = low + frac * (top - low)
        text = ("-" if value < 0 else "") + _fmt(abs(value)) if value else "0"
        if frac == 1.0 and clipped:
            text = ">=" + text
        draw.text((x1 + 5, y - 6), text, fill=(30, 30, 30), font=font)
    # the label runs up the right edge (one line per "\n")
    text = _label_image(label)
    if text.height > height:
        text = text.resize((text.width, height))
    bar.paste(text, (BAR_W - text.width - 1, (height - text.height) // 2))
    return bar


DIVERGING_LUT = diverging(np.linspace(-1.0, 1.0, 256)) / 255.0


def with_bar(rgb: np.ndarray, lut: np.ndarray, span, label: str, scale: int = 4) -> np.ndarray:
    """``rgb`` (H, W, 3 uint8) enlarged ``scale`` times (nearest) with a colour bar for ``span``
    (low, high) on its right, as (H', W', 3) uint8."""
    h, w = rgb.shape[:2]
    image = Image.fromarray(rgb).resize((w * scale, h * scale), Image.NEAREST)
    bar = colour_bar(lut, span, max(h * scale, 120), label, False)
    canvas = Image.new("RGB", (image.width + 4 + bar.width, max(image.height, bar.height)), "white")
    canvas.paste(image, (0, 0))
    canvas.paste(bar, (image.width + 4, 0))
    return np.asarray(canvas)


def _contours(base: np.ndarray, m: np.ndarray, rgb, levels=(0.5, 0.75, 0.9)) -> np.ndarray:
    """Iso-lines of ``m`` (in [0, 1]) drawn on ``base`` (H, W, 3 float), thicker for higher levels."""
    out = base.copy()
    for i, level in enumerate(levels):
        inside = m >= level
        edge = inside & ~ndimage.binary_erosion(inside, iterations=1)
        if i == len(levels) - 1:
            edge = ndimage.binary_dilation(edge) & inside
        out[edge] = rgb
    return out


def render_tile(
    crop: np.ndarray | None,
    amap: np.ndarray,
    method: str,
    channels=None,
    channel_names=None,
    cmap: str = "auto",
    alpha: float = 0.6,
    mode: str = "side",
    percentile: float = 99.5,
    smooth: float = 0.0,
) -> bytes:
    """PNG of one cell: crop | map (``side``), map blended on the crop (``blend``) or contour
    lines at 50/75/90% of the clipped maximum (``contour``), with a colour bar.

    Args:
        crop: (C, H, W) pixels, or None when the dataset is not reachable (map alone).
        amap: the stored (C, H, W) or (1, H, W) map.
        method: registered method name (the bar's units).
        channels: shown channel indices (None: all).
        channel_names: names of all channels (their stain colours).
        cmap: ``auto`` or a LUT of :data:`MAP_COLORMAPS` (side mode only; blend/contour use auto).
        alpha: blend weight at the map's clipped maximum.
        mode: one of :data:`MODES`.
        percentile: robust top of the scale (100: the maximum).
        smooth: Gaussian sigma in crop pixels (0: off).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {MODES}")
    if cmap not in MAP_COLORMAPS:
        raise ValueError(f"unknown colormap {cmap!r}; use one of {MAP_COLORMAPS}")
    if not 50 <= percentile <= 100 or not 0 <= smooth <= 5:
        raise ValueError(
            f"percentile must be in [50, 100] and smooth in [0, 5] px, got {percentile}, {smooth}"
        )
    if crop is not None:
        chosen = [c for c in (channels or range(crop.shape[0])) if 0 <= int(c) < crop.shape[0]]
        chosen = chosen or list(range(crop.shape[0]))
        names = (
            list(channel_names) if channel_names and len(channel_names) == crop.shape[0] else None
        )
        tints = channel_colors(chosen, names)
        base = overlay(crop.astype(np.float32), None, channels=chosen, channel_names=names) / 255.0
        size = crop.shape[1:]
    else:
        chosen, tints, base, size = None, [], None, amap.shape[1:]
    plane = reduce_map(amap, chosen if amap.shape[0] > 1 else None)
    if plane.shape != tuple(size):
        plane = np.asarray(
            Image.fromarray(plane.astype(np.float32)).resize(size[::-1], Image.BILINEAR)
        )
    m, top = scale_map(plane, percentile, smooth)
    side = mode == "side" or base is None
    lut, _ = lut_for(cmap if side else "auto", tints)
    heat = lut[np.round(m * (len(lut) - 1)).astype(int)]
    if side:
        panels = [heat] if base is None else [base, heat]
    elif mode == "blend":
        w = alpha * m[..., None]
        panels = [base * (1 - w) + w * heat]
    else:
        panels = [_contours(base, m, lut[-1])]
    h, w = size
    gap, k = 4, screen_scale(h)
    width = len(panels) * w * k + (len(panels) - 1) * gap + BAR_W
    canvas = Image.new("RGB", (width, h * k), "white")
    x = 0
    for panel in panels:
        img = Image.fromarray(np.round(np.clip(panel, 0, 1) * 255).astype(np.uint8))
        canvas.paste(img.resize((w * k, h * k), Image.NEAREST), (x, 0))
        x += w * k + gap
    clipped = percentile < 100 and bool((plane > top).any()) if top else False
    label = units(method) + (f"\nsmoothed {smooth:g} px" if smooth else "")
    canvas.paste(colour_bar(lut, top, h * k, label, clipped), (x - gap + 2, 0))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", compress_level=PNG_LEVEL)
    return buffer.getvalue()
