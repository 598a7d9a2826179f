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


def _stretch(channel: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    lo, hi = np.percentile(channel, percentiles)
    return np.clip((channel - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(channel)


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
    cmap(m), so a zero map leaves the plain composite.

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
    img = np.asarray(image.detach().float().cpu() if _is_tensor(image) else image, float)
    if img.ndim != 3:
        raise ValueError(
            f"image must be (C, H, W), got shape {img.shape}; use image[None] for 1 channel"
        )
    if channel_names is not None and len(channel_names) != img.shape[0]:
        raise ValueError(
            f"{len(channel_names)} channel_names for an image with {img.shape[0]} channels"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    idx = [
        _channel_index(c, channel_names, img.shape[0]) for c in (channels or range(img.shape[0]))
    ]
    base = np.zeros((*img.shape[1:], 3))
    for c, rgb in zip(idx, channel_colors(idx, channel_names, colors)):
        base += _stretch(img[c], percentiles)[..., None] * rgb
    base = np.clip(base, 0.0, 1.0)
    if cam is not None:
        m = np.asarray(cam.detach().float().cpu() if _is_tensor(cam) else cam, float)
        m = np.clip(m.squeeze(), 0.0, None)
        if m.shape != img.shape[1:]:
            raise ValueError(f"cam must be (H, W) = {img.shape[1:]}, got {m.shape}")
        m = m / m.max() if m.max() > 0 else m
        lut = colormap(cmap)
        heat = lut[np.round(m * (len(lut) - 1)).astype(int)]
        w = alpha * m[..., None]
        base = base * (1 - w) + w * heat
    return np.round(base * 255).astype(np.uint8)


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
