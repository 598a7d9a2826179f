"""Shape helpers shared by the quality metrics."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def to_numpy(x: Any) -> np.ndarray:
    """Return a numpy array or tensor as a float64 numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()  # bfloat16/float16 have no numpy view
    return np.asarray(x, dtype=np.float64)


def to_bhw(maps: Any, name: str = "maps") -> np.ndarray:
    """Bring maps to ``(B, H, W)`` float64, summing channels of ``(B, C, H, W)`` maps.

    Args:
        maps: ``(B, H, W)``, ``(B, 1, H, W)`` or ``(B, C, H, W)`` array or tensor.
        name: Argument name used in error messages.
    """
    maps = to_numpy(maps)
    if maps.ndim == 4:
        return maps.sum(axis=1)
    if maps.ndim == 3:
        return maps
    raise ValueError(f"{name} must be (B, H, W) or (B, C, H, W), got shape {maps.shape}")


def mask_bhw(mask: Any, batch: int, hw: tuple[int, int], name: str = "mask") -> np.ndarray:
    """Bring a mask to boolean ``(B, H, W)``; an ``(H, W)`` mask is shared by the batch.

    Args:
        mask: ``(H, W)``, ``(B, H, W)`` or ``(B, 1, H, W)``; nonzero means inside.
        batch: Batch size B.
        hw: Expected ``(H, W)``.
        name: Argument name used in error messages.
    """
    mask = to_numpy(mask) > 0
    if mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.ndim == 2:
        mask = np.broadcast_to(mask, (batch, *mask.shape))
    if mask.shape != (batch, *hw):
        raise ValueError(
            f"{name} has shape {mask.shape}; expected (H, W), (B, H, W) or (B, 1, H, W) "
            f"with B={batch}, H, W={hw}"
        )
    return mask
