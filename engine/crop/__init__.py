"""Find the cells: whole fields of view -> fixed-size single-cell crops in a cytotune dataset.

``cytotune crop FIELDS --out DATASET`` reads fields (a folder or an index CSV), finds every cell
with a registered finder (``classical``: smoothing, Otsu, distance-transform watershed;
``learned``: a Mask R-CNN trained with ``cytotune crop train``), and writes crops centred on each
cell, with its mask, through the ingest writer. Python API: :func:`crop_fields`,
:func:`create_finder`, :func:`list_finders`, :func:`score_fields`.
"""

from __future__ import annotations

from cytotune.lazy import lazy_exports

from .finders import Finder, create_finder, list_finders, register_finder

# Imported on first use: they pull scikit-image, pyarrow or torch, `--help` needs none of them.
_LAZY = {
    "CropOptions": ".pipeline",
    "CropReport": ".pipeline",
    "crop_fields": ".pipeline",
    "FieldRecord": ".fields",
    "list_fields": ".fields",
    "read_field": ".fields",
    "score_field": ".metrics",
    "score_fields": ".metrics",
    "iou_matrix": ".metrics",
}

__all__ = [
    "CropOptions",
    "CropReport",
    "FieldRecord",
    "Finder",
    "create_finder",
    "crop_fields",
    "iou_matrix",
    "list_fields",
    "list_finders",
    "read_field",
    "register_finder",
    "score_field",
    "score_fields",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
