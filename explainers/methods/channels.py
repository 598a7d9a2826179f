"""Per-channel attribution shares and pseudo-colour overlays for N-channel crops (never RGB).

>>> shares = channel_attribution(attr)  # (B, C), rows sum to 1
>>> rgb = overlay(image, cam, channels=["dna", "actin"], channel_names=["dna", "actin", "vim"])
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

# Only channel_attribution needs torch (imported there): the colour helpers are numpy, so the
# dashboard draws tiles without loading torch.

# Stain -> colour, by lower-case channel name (the seed papers' conventions).
STAIN_COLORS: dict[str, tuple[float, float, float]] = {
    **dict.fromkeys(("dna", "dapi", "hoechst", "nucleus", "nuclei"), (0.0, 0.3, 1.0)),
    **dict.fromkeys(("actin", "phalloidin", "f-actin"), (1.0, 0.0, 0.0)),
    **dict.fromkeys(("tubulin", "microtubules", "vimentin"), (0.0, 1.0, 0.0)),
}
NAMED_COLORS: dict[str, tuple[float, float, float]] = {
    "blue": (0.0, 0.3, 1.0),
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "magenta": (1.0, 0.0, 1.0),
    "cyan": (0.0, 1.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "orange": (1.0, 0.5, 0.0),
    "white": (1.0, 1.0, 1.0),
    "gray": (0.5, 0.5, 0.5),
}
PALETTE = tuple(NAMED_COLORS)  # order used for channels without a known stain

_INFERNO = [(0, 0, 4), (22, 11, 57), (66, 10, 104), (106, 23, 110), (147, 38, 103), (188, 55, 84),
            (221, 81, 58), (243, 120, 25), (252, 165, 10), (246, 215, 70), (252, 255, 164)]  # fmt: skip
_VIRIDIS = [(68, 1, 84), (72, 36, 117), (65, 68, 135), (53, 95, 141), (42, 120, 142), (33, 145, 140),
            (34, 168, 132), (68, 191, 112), (122, 209, 81), (189, 223, 38), (253, 231, 37)]  # fmt: skip


def colormap(name: str = "inferno", n: int = 256) -> np.ndarray:
    """An (n, 3) float LUT in [0, 1]: ``"inferno"``, ``"viridis"`` (11 anchors of matplotlib's
    maps, linearly interpolated), ``"jet"`` or ``"gray"``."""
    t = np.linspace(0.0, 1.0, n)
    if name in ("inferno", "viridis"):
        anchors = np.asarray(_INFERNO if name == "inferno" else _VIRIDIS, float) / 255
        grid = np.linspace(0.0, 1.0, len(anchors))
        return np.stack([np.interp(t, grid, anchors[:, c]) for c in range(3)], 1)
    if name == "jet":
        return np.clip(1.5 - np.abs(4 * t[:, None] - np.array([3.0, 2.0, 1.0])), 0.0, 1.0)
    if name == "gray":
        return np.repeat(t[:, None], 3, 1)
    raise ValueError(f"unknown colormap {name!r}; use 'inferno', 'viridis', 'jet' or 'gray'")


def channel_attribution(attr: Tensor) -> Tensor:
    """Share of absolute attribution per channel.

    Args:
        attr: (B, C, H, W) per-channel attributions.

    Returns:
        (B, C), each row summing to 1 (all zeros for an all-zero attribution).
    """
    import torch

    if not isinstance(attr, torch.Tensor) or attr.ndim != 4:
        raise ValueError(f"attr must be a (B, C, H, W) tensor, got {getattr(attr, 'shape', attr)}")
    mass = attr.detach().float().abs().sum((2, 3))  # (B, C)
    total = mass.sum(1, keepdim=True)
    return torch.where(total > 0, mass / total.clamp_min(torch.finfo(mass.dtype).tiny), 0.0)


def _is_tensor(x: Any) -> bool:
    """Whether ``x`` is a torch tensor, without importing torch (no torch loaded: no tensors)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _color(value: Any) -> np.ndarray:
    if isinstance(value, str):
        if value.lower() not in NAMED_COLORS:
            raise ValueError(f"unknown colour {value!r}; use one of {list(NAMED_COLORS)} or RGB")
        return np.asarray(NAMED_COLORS[value.lower()])
    rgb = np.asarray(value, float).reshape(-1)
    if rgb.shape != (3,) or rgb.min() < 0:
        raise ValueError(f"a colour is a name or 3 non-negative numbers, got {value!r}")
    return rgb / 255 if rgb.max() > 1 else rgb


def channel_colors(
    channels: Sequence[int], names: Sequence[str] | None, colors: Any = None
) -> list[np.ndarray]:
    """One RGB colour per chosen channel: explicit ``colors`` (a list aligned with ``channels``
    or a dict keyed by channel name or index), else the stain table, else unused palette colours."""
    if colors is not None and not isinstance(colors, Mapping):
        if len(colors) != len(channels):
            raise ValueError(f"got {len(colors)} colours for {len(channels)} channels")
        return [_color(c) for c in colors]
    table = dict(colors or {})
    out: list[np.ndarray | None] = []
    for c in channels:
        name = names[c] if names is not None else None
        pick = table.get(c, table.get(name))
        if pick is None and name is not None:
            pick = STAIN_COLORS.get(name.lower())
        out.append(None if pick is None else _color(pick))
    free = iter(
        rgb
        for rgb in (np.asarray(NAMED_COLORS[p]) for p in PALETTE)
        if not any(o is not None and np.allclose(o, rgb) for o in out)
    )
    return [o if o is not None else next(free, np.ones(3)) for o in out]


def _as_array(x: Any) -> np.ndarray:
    """An array in its own dtype (float32 for a tensor); cast to float64 chunk by chunk."""
    return x.detach().float().cpu().numpy() if _is_tensor(x) else np.asarray(x)


# pixels per chunk of :func:`overlays`: its float64 temporaries stay in the CPU's caches
_CHUNK_PIXELS = 1 << 16


def overlays(
    images: Any,
    cams: Any = None,
    channels: Sequence[int | str] | None = None,
    colors: Any = None,
    alpha: float = 0.5,
    *,
    channel_names: Sequence[str] | None = None,
    cmap: str = "inferno",
    percentiles: tuple[float, float] = (1.0, 99.5),
) -> np.ndarray:
    """:func:`overlay` of a batch: equal, bit for bit, to stacking ``overlay(images[i],
    cams[i], ...)``, with the percentiles, stretch, blend and LUT look-up vectorised.

    Args:
        images: (N, C, H, W) array or tensor.
        cams: (N, H, W) (or (N, 1, H, W)) maps, or None for the composites alone.
        channels, colors, alpha, channel_names, cmap, percentiles: as in :func:`overlay`.

    Returns:
        (N, H, W, 3) uint8 RGB.
    """
    img = _as_array(images)
    if img.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {img.shape}")
    n, num, h, w = img.shape
    if channel_names is not None and len(channel_names) != num:
        raise ValueError(f"{len(channel_names)} channel_names for an image with {num} channels")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    idx = [_channel_index(c, channel_names, num) for c in (channels or range(num))]
    tints = channel_colors(idx, channel_names, colors)
    maps, lut = None, None
    if cams is not None:
        maps = _as_array(cams)
        if maps.ndim == 4 and maps.shape[1] == 1:
            maps = maps[:, 0]
        if maps.shape != (n, h, w):
            raise ValueError(f"cams must be (N, H, W) = {(n, h, w)}, got {maps.shape}")
        lut = colormap(cmap)
    out = np.empty((n, h, w, 3), np.uint8)
    step = max(1, _CHUNK_PIXELS // max(1, h * w))
    for s in range(0, n, step):
        part = slice(s, s + step)
        m = None if maps is None else np.asarray(maps[part], float)
        chosen = np.asarray(img[part][:, idx], float)  # (n, k, H, W)
        out[part] = _render(chosen, tints, m, lut, alpha, percentiles)
    return out


def _render(img, tints, maps, lut, alpha, percentiles) -> np.ndarray:
    """(n, k, H, W) chosen channels (float64) -> (n, H, W, 3) uint8; see :func:`overlays`."""
    # percentiles of sorted pixels: the same order statistics, faster than a float64 partition
    flat = np.sort(img.reshape(*img.shape[:2], -1), axis=-1)
    lo, hi = (q[..., None, None] for q in np.percentile(flat, percentiles, axis=-1))  # (n, k)
    ok = hi > lo  # a flat channel (hi <= lo) stays black
    stretched = np.where(ok, np.clip((img - lo) / np.where(ok, hi - lo, 1.0), 0.0, 1.0), 0.0)
    # one colour component at a time (the same sums, in the same order, as adding (H, W, 3)
    # tints, whose broadcast is slow)
    base = np.zeros((len(img), *img.shape[2:], 3))
    for c, rgb in enumerate(tints):
        for j in range(3):
            base[..., j] += stretched[:, c] * rgb[j]
    np.clip(base, 0.0, 1.0, out=base)
    if maps is not None:
        m = np.clip(maps, 0.0, None)  # (n, H, W)
        top = m.max((-2, -1))[:, None, None]
        m = np.where(top > 0, m / np.where(top > 0, top, 1.0), m)
        heat = _rint(m * (len(lut) - 1)).astype(int)
        wgt = alpha * m
        for j in range(3):
            base[..., j] = base[..., j] * (1 - wgt) + wgt * np.take(lut[:, j], heat)
    return _rint(base * 255).astype(np.uint8)


def _rint(x: np.ndarray) -> np.ndarray:
    """np.round of non-negative float64 below 2**51, in place and 3x faster: adding 2**52
    leaves no fraction bits, so the sum is rounded half to even as np.round does."""
    x += 2.0**52
    x -= 2.0**52
    return x


def overlay(
    image: Any,
    cam: Any = None,
    channels: Sequence[int | str] | None = None,
    colors: Any = None,
    alpha: float = 0.5,
    *,
    channel_names: Sequence[str] | None = None,
    cmap: str = "inferno",
    percentiles: tuple[float, float] = (1.0, 99.5),
) -> np.ndarray:
    """Pseudo-colour composite of chosen channels with an attribution map blended on top.

    Each chosen channel is contrast-stretched between its ``percentiles`` and tinted with its
    colour; tints add up (clipped). The map is scaled by its maximum (negative values count as
    0) and blended in proportion to its value: out = base * (1 - alpha * m) + alpha * m *
    cmap(m), so a zero map leaves the plain composite. :func:`overlays` draws a batch.

    Args:
        image: (C, H, W) array or tensor.
        cam: (H, W) (or (1, H, W)) map, or None for the composite alone.
        channels: channel indices, or names with ``channel_names``; None = all channels.
        colors: a list of colours aligned with ``channels`` or a dict keyed by name or index;
            a colour is a name (``"blue"``, ``"magenta"``, ...) or RGB in [0, 1] or [0, 255].
            Default: DNA blue, actin red, tubulin and vimentin green, other channels distinct
            palette colours.
        alpha: weight of the map where it is at its maximum, in [0, 1].
        channel_names: names of all C channels (the dataset manifest's ``channel_names``).
        cmap: LUT of the map (:func:`colormap`).
        percentiles: low/high percentiles of the per-channel contrast stretch.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    img = _as_array(image)
    if img.ndim != 3:
        raise ValueError(
            f"image must be (C, H, W), got shape {img.shape}; use image[None] for 1 channel"
        )
    m = None
    if cam is not None:
        m = _as_array(cam).squeeze()
        if m.shape != img.shape[1:]:
            raise ValueError(f"cam must be (H, W) = {img.shape[1:]}, got {m.shape}")
        m = m[None]
    return overlays(
        img[None],
        m,
        channels,
        colors,
        alpha,
        channel_names=channel_names,
        cmap=cmap,
        percentiles=percentiles,
    )[0]


def _channel_index(c: int | str, names: Sequence[str] | None, num: int) -> int:
    if isinstance(c, str):
        if names is None:
            raise ValueError(f"channel {c!r} given by name; pass channel_names= too")
        lower = [n.lower() for n in names]
        if c.lower() not in lower:
            raise ValueError(f"unknown channel {c!r}; channels: {list(names)}")
        return lower.index(c.lower())
    if not -num <= int(c) < num:
        raise ValueError(f"channel index {c} out of range for {num} channels")
    return int(c) % num
