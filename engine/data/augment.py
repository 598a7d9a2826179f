"""Batch augmentations and normalisation on torch tensors, deterministic per (seed, epoch, cell).

All random parameters of a crop derive from a 64-bit per-row seed (``row_seeds``), never from
batch composition or order, so the same crop gets the same augmentation in the same epoch on the
in-process loader and the Ray Data loader, on CPU and GPU. Geometric transforms (rotation,
shifts, flips, 90-degree turns) are fused into one affine resampling per batch.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

NORMALIZATIONS = ("zscore", "percentile", "none")
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentations used by the seed studies (all off by default except where noted).

    Args:
        rotate_degrees: random rotation within +-this angle.
        shift: random translation up to this fraction of the crop size.
        flip: random horizontal flip.
        rot90: random multiple of 90 degrees.
        sharpen: maximal unsharp-mask strength (0 disables).
        sharpen_prob: probability of sharpening a crop.
        intensity: per-crop, per-channel gain jitter: raw intensities times a factor drawn
            uniformly from [1 - intensity, 1 + intensity] (0 disables).
    """

    rotate_degrees: float = 0.0
    shift: float = 0.0
    flip: bool = False
    rot90: bool = False
    sharpen: float = 0.0
    sharpen_prob: float = 0.5
    intensity: float = 0.0

    def __post_init__(self) -> None:
        checks = {
            "rotate_degrees": 0 <= self.rotate_degrees <= 180,
            "shift": 0 <= self.shift <= 0.5,
            "sharpen": 0 <= self.sharpen <= 10,
            "sharpen_prob": 0 <= self.sharpen_prob <= 1,
            "intensity": 0 <= self.intensity < 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(
                    f"augment {name}={getattr(self, name)} out of range (rotate_degrees 0..180, shift 0..0.5, sharpen 0..10, sharpen_prob 0..1, intensity 0..<1)"
                )

    @property
    def geometric(self) -> bool:
        return bool(self.rotate_degrees or self.shift or self.flip or self.rot90)

    @property
    def enabled(self) -> bool:
        return self.geometric or self.sharpen > 0 or self.intensity > 0

    @classmethod
    def cells(cls) -> AugmentConfig:
        """The default for cell crops, whose class never depends on orientation: any rotation
        (90-degree turns plus +-45 degrees), flips, 5 % shifts and +-10 % per-channel gain."""
        return cls(rotate_degrees=45.0, flip=True, rot90=True, shift=0.05, intensity=0.1)

    @classmethod
    def standard(cls) -> AugmentConfig:
        """The seeds' recipe: +-15 degree rotation, 10 % shifts, flips, 90-degree turns, light sharpening."""
        return cls(
            rotate_degrees=15.0, shift=0.1, flip=True, rot90=True, sharpen=1.0, sharpen_prob=0.3
        )


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def row_seeds(cell_ids, seed: int, epoch: int) -> np.ndarray:
    """One uint64 seed per crop from (seed, epoch, cell id); independent of order and batching."""
    ids = np.fromiter(
        (zlib.crc32(str(c).encode()) for c in cell_ids), dtype=np.uint64, count=len(cell_ids)
    )
    with np.errstate(over="ignore"):
        base = _splitmix64(np.uint64(seed) * np.uint64(1_000_003) + np.uint64(epoch))
        return _splitmix64(ids ^ base)


def uniforms(seeds: np.ndarray, count: int) -> np.ndarray:
    """``count`` independent U[0, 1) numbers per seed, shape (N, count)."""
    out = np.empty((len(seeds), count))
    state = np.asarray(seeds, dtype=np.uint64)
    for j in range(count):
        state = _splitmix64(state)
        out[:, j] = (state >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return out


def augment(images: torch.Tensor, seeds: np.ndarray, config: AugmentConfig) -> torch.Tensor:
    """Augment a float batch ``(B, C, H, W)`` of raw intensities; rotations and shifts fill the
    uncovered corners with each crop's background level (its border median), not 0."""
    if not config.enabled or images.shape[0] == 0:
        return images
    channels = images.shape[1]
    u = torch.as_tensor(uniforms(seeds, 7 + channels), dtype=torch.float32)  # (B, 7 + C)
    if images.device.type == "cuda":  # pinned + non-blocking: no stall of the CPU per batch
        u = u.pin_memory().to(images.device, non_blocking=True)
    if config.rotate_degrees or config.shift:  # what moves into the crop is its own background
        background = border_median(images)
        images = _affine(images - background, u, config) + background
    elif config.geometric:  # flips and quarter turns only move pixels within the crop
        images = _affine(images, u, config)
    if config.sharpen > 0:
        images = _sharpen(images, u, config)
    if config.intensity > 0:
        gain = 1 + (2 * u[:, 7 : 7 + channels] - 1) * config.intensity  # (B, C)
        images = images * gain.view(*gain.shape, 1, 1)
    return images


def border_median(images: torch.Tensor) -> torch.Tensor:
    """Per crop and channel, the median of the outermost pixel ring, shape ``(B, C, 1, 1)``: the
    background level (a camera offset of hundreds of counts in raw uint16 crops, not 0)."""
    ring = torch.cat(
        [images[..., 0, :], images[..., -1, :], images[..., 1:-1, 0], images[..., 1:-1, -1]], dim=-1
    )
    return ring.median(dim=-1).values[..., None, None]


def _affine(images: torch.Tensor, u: torch.Tensor, config: AugmentConfig) -> torch.Tensor:
    angle = (2 * u[:, 0] - 1) * math.radians(config.rotate_degrees)
    if config.rot90:
        angle = angle + torch.floor(u[:, 1] * 4) * (math.pi / 2)
    flip = torch.where(u[:, 2] < 0.5, -1.0, 1.0) if config.flip else torch.ones_like(angle)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(images.shape[0], 2, 3, device=images.device)
    theta[:, 0, 0], theta[:, 0, 1] = cos * flip, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin * flip, cos
    theta[:, 0, 2] = (2 * u[:, 3] - 1) * 2 * config.shift  # grid units span 2 per crop side
    theta[:, 1, 2] = (2 * u[:, 4] - 1) * 2 * config.shift
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _sharpen(images: torch.Tensor, u: torch.Tensor, config: AugmentConfig) -> torch.Tensor:
    channels = images.shape[1]
    kernel = (
        torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], device=images.device) / 16
    )
    kernel = kernel.expand(channels, 1, 3, 3)
    blurred = F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), kernel, groups=channels)
    strength = torch.where(u[:, 5] < config.sharpen_prob, u[:, 6] * config.sharpen, 0.0)
    return images + strength.view(-1, 1, 1, 1) * (images - blurred)


def normalization_constants(stats, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (offset, scale) so that ``(x - offset) / scale`` normalises raw pixels."""
    if method not in NORMALIZATIONS:
        raise ValueError(f"normalization {method!r} is not one of {NORMALIZATIONS}")
    c = len(stats.mean)
    if method == "none":
        return np.zeros(c), np.ones(c)
    if method == "zscore":
        offset, scale = np.asarray(stats.mean), np.asarray(stats.std)
    else:
        offset, scale = np.asarray(stats.p01), np.asarray(stats.p99) - np.asarray(stats.p01)
    return offset, np.where(scale > 0, scale, 1.0)


def normalize(images: torch.Tensor, offset, scale) -> torch.Tensor:
    """``(images - offset) / scale`` per channel; pass tensors already on the device to avoid copies."""
    o = torch.as_tensor(offset, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(scale, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - o) / s
