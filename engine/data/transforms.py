"""Size unification for ingest: pad, crop or resize a (C, H, W) crop to a target size."""

from __future__ import annotations

import numpy as np

FIT_MODES = ("pad", "crop", "resize")


def parse_size(text: str | int | None) -> tuple[int, int] | None:
    """Parse ``64`` or ``64x48`` (H x W) into a tuple; None stays None."""
    if text is None:
        return None
    parts = str(text).lower().split("x")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"size {text!r} is not an integer or HxW (e.g. 64 or 64x48)") from None
    size = size * 2 if len(size) == 1 else size
    if len(size) != 2 or min(size) < 4:
        raise ValueError(f"size {text!r} must be one or two integers >= 4 (e.g. 64 or 64x48)")
    return size


def fit(
    image: np.ndarray, size: tuple[int, int], mode: str, *, nearest: bool = False
) -> np.ndarray:
    """Bring a (C, H, W) array (or (H, W) mask) to ``size``.

    ``pad`` centre-pads smaller sides with zeros and centre-crops larger ones (no resampling),
    ``crop`` only centre-crops (smaller crops raise), ``resize`` resamples (bilinear; nearest for
    masks), rounding back to the integer dtype.
    """
    if mode not in FIT_MODES:
        raise ValueError(f"fit mode {mode!r} is not one of {FIT_MODES}")
    squeeze = image.ndim == 2
    array = image[None] if squeeze else image
    if tuple(array.shape[1:]) != tuple(size):
        if mode == "resize":
            array = _resize(array, size, nearest)
        else:
            h, w = array.shape[1:]
            if mode == "crop" and (h < size[0] or w < size[1]):
                raise ValueError(
                    f"crop {h}x{w} is smaller than --size {size[0]}x{size[1]}; use --fit pad or resize"
                )
            array = _pad_or_crop(array, size)
    return array[0] if squeeze else array


def _pad_or_crop(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    out = np.zeros((array.shape[0], *size), dtype=array.dtype)
    src, dst = [], []
    for have, want in zip(array.shape[1:], size):
        if have >= want:
            start = (have - want) // 2
            src.append(slice(start, start + want))
            dst.append(slice(0, want))
        else:
            start = (want - have) // 2
            src.append(slice(0, have))
            dst.append(slice(start, start + have))
    out[:, dst[0], dst[1]] = array[:, src[0], src[1]]
    return out


def _resize(array: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    from PIL import Image

    resample = Image.NEAREST if nearest else Image.BILINEAR
    channels = [
        np.asarray(Image.fromarray(c.astype(np.float32), mode="F").resize(size[::-1], resample))
        for c in array
    ]
    out = np.stack(channels)
    if array.dtype.kind in "iub":
        info = np.iinfo(array.dtype) if array.dtype.kind != "b" else np.iinfo(np.uint8)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(array.dtype)
