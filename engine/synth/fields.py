"""Whole synthetic fields of view whose cells, positions and classes are all known.

The cells of one layout field (same plate, well and so class) are rendered as usual and tiled
``grid`` x ``grid`` into one field image, each shifted by a random offset inside its tile (the
cell never leaves its tile). The field's instance label image marks every cell, so a cell finder
can be scored against it and crops cut from the field can be traced back to their cells.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .layout import generator

_JITTER_TAG = 1 << 59


@dataclass
class SynthField:
    """One tiled field: pixels, instance labels and what each cell is."""

    field_id: str
    image: np.ndarray  # (C, grid*size, grid*size) uint16
    truth: np.ndarray  # (grid*size, grid*size) int32, cell k has label k + 1
    label: str
    plate: str
    well: str
    cell_ids: list[str]
    centroids: np.ndarray  # (n, 2) (y, x) of each cell in field pixels


def _shift(mask: np.ndarray, jitter: int, rng: np.random.Generator) -> tuple[int, int]:
    """A random (dy, dx) of at most ``jitter`` px that keeps the cell's mask inside its tile."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    lo_y, hi_y = max(-jitter, -int(ys.min())), min(jitter, h - 1 - int(ys.max()))
    lo_x, hi_x = max(-jitter, -int(xs.min())), min(jitter, w - 1 - int(xs.max()))
    return int(rng.integers(lo_y, hi_y + 1)), int(rng.integers(lo_x, hi_x + 1))


def render_fields(
    task: str, grid: int = 3, size: int = 64, seed: int = 0, jitter: float = 0.15, **options
) -> list[SynthField]:
    """Render every layout field of ``task`` as one tiled field of ``grid`` x ``grid`` cells.

    Args:
        task: registered synthetic task.
        grid: cells per field side.
        size: tile (crop) side in pixels.
        seed: as in :func:`~cytotune.engine.synth.render`.
        jitter: largest shift of a cell inside its tile, as a fraction of ``size``.
        **options: task options; ``plates * wells_per_class * fields_per_well * classes``
            fields are rendered.
    """
    from .generate import render
    from .tasks import get_task

    if not 1 <= grid <= 32:
        raise ValueError(f"grid={grid!r} must be an integer in [1, 32]")
    if not 0 <= jitter <= 0.5:
        raise ValueError(f"jitter={jitter!r} must be within [0, 0.5]")
    spec = get_task(task)
    opts = spec.make_options(**options)
    n_fields = len(spec.classes) * opts.plates * opts.wells_per_class * opts.fields_per_well
    batch = render(task, n_fields * grid * grid, size=size, seed=seed, **options)
    members: dict[str, list[int]] = {}
    for i, name in enumerate(batch.fields):
        members.setdefault(name, []).append(i)
    shift = int(round(jitter * size))
    out = []
    for name, rows in members.items():
        rng = generator(_JITTER_TAG, seed * 1_000_003 + batch.indices[rows[0]])
        image = np.empty((batch.images.shape[1], grid * size, grid * size), dtype=np.uint16)
        truth = np.zeros((grid * size, grid * size), dtype=np.int32)
        centroids = []
        for k, r in enumerate(rows):
            dy, dx = _shift(batch.masks[r], shift, rng)
            top, left = (k // grid) * size, (k % grid) * size
            tile = np.roll(batch.images[r], (dy, dx), axis=(1, 2))
            mask = np.roll(batch.masks[r], (dy, dx), axis=(0, 1)).astype(bool)
            image[:, top : top + size, left : left + size] = tile
            truth[top : top + size, left : left + size][mask] = k + 1
            ys, xs = np.nonzero(mask)
            centroids.append((top + ys.mean(), left + xs.mean()))
        r0 = rows[0]
        out.append(
            SynthField(
                field_id=name,
                image=image,
                truth=truth,
                label=batch.labels[r0],
                plate=batch.plates[r0],
                well=batch.wells[r0],
                cell_ids=[batch.cell_ids[r] for r in rows],
                centroids=np.asarray(centroids),
            )
        )
    return out


def write_fields(
    task: str, out_dir: str | Path, grid: int = 3, size: int = 64, seed: int = 0, **options
) -> Path:
    """Write :func:`render_fields` as ``fields/<id>.tif`` (C, H, W uint16), ``truth/<id>.tif``
    (instance labels) and ``index.csv`` (``path,label,plate,well,field,truth``).

    Returns:
        The path of ``index.csv``, ready for ``cytotune crop``.
    """
    import pandas as pd
    import tifffile

    out_dir = Path(out_dir)
    (out_dir / "fields").mkdir(parents=True, exist_ok=True)
    (out_dir / "truth").mkdir(parents=True, exist_ok=True)
    rows = []
    for f in render_fields(task, grid=grid, size=size, seed=seed, **options):
        tifffile.imwrite(out_dir / "fields" / f"{f.field_id}.tif", f.image)
        tifffile.imwrite(out_dir / "truth" / f"{f.field_id}.tif", f.truth.astype(np.uint16))
        rows.append(
            {
                "path": f"fields/{f.field_id}.tif",
                "label": f.label,
                "plate": f.plate,
                "well": f.well,
                "field": f.field_id,
                "truth": f"truth/{f.field_id}.tif",
            }
        )
    index = out_dir / "index.csv"
    pd.DataFrame(rows).to_csv(index, index=False)
    return index
