"""Image file readers: one function per format, looked up by file extension.

Every reader returns the pixels as stored, as a C x H x W array (a 2-D image gets C = 1);
channels are never coerced to RGB and dtypes are kept. Unreadable or truncated files raise.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from cytotune.registry import Registry

CHANNEL_AXES = ("auto", "first", "last")
# extension -> (reader, where that format keeps channels)
READERS: Registry[tuple[Callable[[Path], np.ndarray], str]] = Registry("image file type")


def register_reader(*extensions: str, channel_axis: str = "auto"):
    """Register a reader for lower-case extensions (with the dot).

    ``channel_axis`` is where that format keeps channels ("last" for PIL images; "auto" lets the
    user's option or the shape decide).
    """

    def wrap(fn):
        for ext in extensions:
            READERS.add(ext, (fn, channel_axis))
        return fn

    return wrap


def registered_readers() -> dict[str, tuple[Callable[[Path], np.ndarray], str]]:
    """Every registered reader, ``{extension: (reader, channel axis)}``: what a worker process
    that was not forked needs from this one (:func:`install_readers`)."""
    return {ext: READERS.get(ext) for ext in READERS.list()}


def install_readers(readers: dict[str, tuple[Callable[[Path], np.ndarray], str]]) -> None:
    """Register those of ``readers`` (from :func:`registered_readers` of the calling process)
    that this process lacks (the built-in ones it registered on import)."""
    have = set(READERS.list())
    for ext, entry in readers.items():
        if ext not in have:
            READERS.add(ext, entry)


def supported_extensions() -> list[str]:
    return READERS.list()


@register_reader(".png", ".jpg", ".jpeg", ".bmp", channel_axis="last")
def _read_pil(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        img.load()  # raises on truncated files
        if img.mode == "P":
            img = img.convert("RGB")
        array = np.array(img)
    if array.dtype == np.int32 and array.min() >= 0 and array.max() < 65536:
        array = array.astype(np.uint16)  # PIL opens 16-bit PNGs as mode "I"
    return array


@register_reader(".tif", ".tiff")
def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    return tifffile.imread(path)  # multi-page files come back as (pages, H, W)


@register_reader(".npy")
def _read_npy(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def read_image(path: str | Path, channel_axis: str = "auto") -> np.ndarray:
    """Read one crop file into a (C, H, W) array.

    Args:
        path: image file (PNG, JPEG, BMP, TIFF incl. multi-page, NPY).
        channel_axis: where the channels are in a 3-D array: "first" (C, H, W), "last" (H, W, C)
            or "auto" (the last axis when it is at most 16 and smaller than the first). PNG/JPEG/BMP
            always keep channels last.
    """
    path = Path(path)
    if path.suffix.lower() not in READERS:
        raise ValueError(
            f"unsupported file type {path.suffix!r} ({path.name}); supported: {', '.join(supported_extensions())}"
        )
    reader, native_axis = READERS.get(path.suffix.lower())
    return to_chw(reader(path), channel_axis if native_axis == "auto" else native_axis)


def to_chw(array: np.ndarray, channel_axis: str = "auto") -> np.ndarray:
    """Bring a 2-D or 3-D image array to (C, H, W)."""
    if channel_axis not in CHANNEL_AXES:
        raise ValueError(f"channel_axis {channel_axis!r} is not one of {CHANNEL_AXES}")
    array = np.asarray(array)
    if array.ndim == 2:
        return array[None]
    if array.ndim != 3:
        raise ValueError(f"expected a 2-D or 3-D image, got shape {array.shape}")
    if channel_axis == "last" or (
        channel_axis == "auto" and array.shape[-1] <= 16 and array.shape[-1] < array.shape[0]
    ):
        array = np.moveaxis(array, -1, 0)
    return np.ascontiguousarray(array)


def normalise_dtype(array: np.ndarray) -> np.ndarray:
    """Map a crop to a storage dtype (uint8, uint16, float32) without changing any value.

    Raises ValueError when that is impossible (e.g. negative integers, values above 65535).
    """
    kind, size = array.dtype.kind, array.dtype.itemsize
    if array.dtype in (np.uint8, np.uint16, np.float32):
        return array
    if kind == "b":
        return array.astype(np.uint8)
    if kind == "f":
        return array.astype(np.float32)  # float16/float64 -> float32
    if kind in "iu":
        lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if lo >= 0 and hi < 256 and size == 1:
            return array.astype(np.uint8)
        if lo >= 0 and hi < 65536:
            return array.astype(np.uint16)
    raise ValueError(
        f"unsupported pixel type {array.dtype} (range {array.min()}..{array.max()}); "
        "store crops as uint8, uint16 or float32"
    )
