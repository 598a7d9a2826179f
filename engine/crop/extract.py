"""From a field and its instance labels to fixed-size crops, one per cell, or a quarantine reason.

A crop is ``size`` x ``size``, centred on the cell's centroid (rounded), with every channel of
the field. Where the window leaves the field it is padded with the field's per-channel median
(its background), never with neighbouring pixels. The crop's mask holds this cell alone;
``clean`` zeroes every pixel outside it. Cells that touch the field edge, are smaller than
``min_area`` or larger than ``max_area`` (or whose box does not fit the crop) get a reason
instead of a crop. Given cell bodies grown around the nuclei (``cells.grow_cells``), the crop is
centred on the body, its mask is the body's, the rules apply to the body, and the metadata keeps
the nucleus's centroid/box/area beside the body's (``body_*``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REASONS = ("touches the field edge", "too small", "too large")


@dataclass
class CellCut:
    """One detected cell: where it is, and either its crop and mask or why it has none."""

    index: int  # 1..N in the field's label image
    centroid: tuple[float, float]  # (y, x) in field pixels
    box: tuple[int, int, int, int]  # (y0, x0, y1, x1), end exclusive
    area: int
    image: np.ndarray | None = None  # (C, size, size), the field's dtype
    mask: np.ndarray | None = None  # (size, size) uint8
    reason: str | None = None
    nucleus: dict | None = None  # the nucleus's centroid/box/area when the cut is a cell body

    @property
    def metadata(self) -> dict:
        own = _place(self.centroid, self.box, self.area)
        if self.nucleus is None:
            return own
        return {**self.nucleus, **{f"body_{k}": v for k, v in own.items()}}


def _place(centroid, box, area) -> dict:
    return {
        "centroid_y": round(float(centroid[0]), 2),
        "centroid_x": round(float(centroid[1]), 2),
        "box_y0": int(box[0]),
        "box_x0": int(box[1]),
        "box_y1": int(box[2]),
        "box_x1": int(box[3]),
        "area": int(area),
    }


def _reason(cut: CellCut, shape: tuple[int, int], size: int, min_area: int, max_area: int | None):
    y0, x0, y1, x1 = cut.box
    if y0 == 0 or x0 == 0 or y1 == shape[0] or x1 == shape[1]:
        return "touches the field edge"
    if cut.area < min_area:
        return f"too small: {cut.area} px < --min-area {min_area}"
    if max_area is not None and cut.area > max_area:
        return f"too large: {cut.area} px > --max-area {max_area}"
    cy, cx = (int(round(c)) for c in cut.centroid)
    top, left = cy - size // 2, cx - size // 2
    if y0 < top or x0 < left or y1 > top + size or x1 > left + size:
        return f"too large: box {y1 - y0}x{x1 - x0} px does not fit the {size}x{size} crop"
    return None


def _window(array: np.ndarray, top: int, left: int, size: int, fill) -> np.ndarray:
    """``array[..., top:top+size, left:left+size]`` with ``fill`` where it leaves the array."""
    h, w = array.shape[-2:]
    out = np.empty(array.shape[:-2] + (size, size), dtype=array.dtype)
    out[...] = fill
    ys, xs = max(top, 0), max(left, 0)
    ye, xe = min(top + size, h), min(left + size, w)
    if ye > ys and xe > xs:
        out[..., ys - top : ye - top, xs - left : xe - left] = array[..., ys:ye, xs:xe]
    return out


def cut_cells(
    field: np.ndarray,
    labels: np.ndarray,
    size: int,
    *,
    min_area: int = 16,
    max_area: int | None = None,
    clean: bool = False,
    bodies: np.ndarray | None = None,
) -> list[CellCut]:
    """Crops (or quarantine reasons) for every cell of a field.

    Args:
        field: (C, H, W) field image.
        labels: (H, W) instance label image from a finder.
        size: crop side in pixels.
        min_area: cells with fewer pixels are quarantined as too small.
        max_area: cells with more pixels are quarantined as too large (None: only the crop
            size limits them).
        clean: zero the pixels outside the cell's mask.
        bodies: (H, W) cell bodies grown from ``labels`` (same label per cell), or None. Given,
            each cut is the body's: crop centre, mask, box, area and quarantine rules; the
            nucleus's centroid/box/area go to :attr:`CellCut.nucleus`.

    Returns:
        One :class:`CellCut` per label, in label order.
    """
    if field.ndim != 3 or field.shape[1:] != labels.shape:
        raise ValueError(
            f"field {field.shape} and labels {labels.shape} do not match (C, H, W)/(H, W)"
        )
    if bodies is not None and bodies.shape != labels.shape:
        raise ValueError(f"cell bodies {bodies.shape} and nuclei {labels.shape} do not match")
    if size < 4:
        raise ValueError(f"crop size must be >= 4 px, got {size}")
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if len(ids) == 0:
        return []
    nuclei = None
    if bodies is not None:
        nuclei = {int(i): _place(*p) for i, *p in zip(ids, *_measure(labels, ids))}
        labels = bodies
    background = np.median(field.reshape(field.shape[0], -1), axis=1).astype(field.dtype)
    background = background[:, None, None]
    cuts = []
    for i, centroid, box, area in zip(ids, *_measure(labels, ids)):
        cut = CellCut(int(i), centroid, box, area)
        cut.nucleus = None if nuclei is None else nuclei[int(i)]
        cut.reason = _reason(cut, labels.shape, size, min_area, max_area)
        if cut.reason is None:
            top = int(round(centroid[0])) - size // 2
            left = int(round(centroid[1])) - size // 2
            mask = (_window(labels, top, left, size, 0) == i).astype(np.uint8)
            image = _window(field, top, left, size, background)
            if clean:
                image = image * mask[None].astype(image.dtype)
            cut.image, cut.mask = image, mask
        cuts.append(cut)
    return cuts


def _measure(labels: np.ndarray, ids: np.ndarray) -> tuple[list, list, list]:
    """Centroids (y, x), boxes (y0, x0, y1, x1) and areas of the labels ``ids`` (all present)."""
    from scipy import ndimage as ndi

    slices = ndi.find_objects(labels)
    areas = ndi.sum_labels(np.ones_like(labels), labels, ids)
    centroids = ndi.center_of_mass(np.ones_like(labels), labels, ids)
    boxes = []
    for i in ids:
        sl = slices[i - 1]
        boxes.append((sl[0].start, sl[1].start, sl[0].stop, sl[1].stop))
    return (
        [(float(c[0]), float(c[1])) for c in centroids],
        boxes,
        [int(a) for a in areas],
    )
