"""``crop_fields``: fields -> finder -> crops -> a cytotune dataset, with nothing dropped silently.

Every detected cell becomes a row (crop, mask, label inherited from its field or well, group
columns ``plate``/``well``/``field``, centroid/box/area metadata, ``source`` = the field file)
or a quarantine entry with the reason. Unreadable fields and fields with the wrong channel count
are quarantined too (cell id = the field id). Beside the Parquet shards, ``DATASET/crop/`` holds
``cells.parquet`` (every detection, accepted or not), ``fields.csv`` (per-field counts) and
``montage/<field>.png`` (detections drawn on the field).
"""

from __future__ import annotations

import re
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from cytotune.engine.io import make_staging_dir, publish_directory

from .extract import cut_cells
from .fields import FieldRecord, list_fields, read_field, resolve_channel
from .finders import Finder, create_finder
from .montage import field_montage

CROP_DIR = "crop"
METADATA_COLUMNS = (
    "centroid_y", "centroid_x", "box_y0", "box_x0", "box_y1", "box_x1", "area",
)  # fmt: skip


@dataclass(frozen=True)
class CropOptions:
    """Validated settings of ``cytotune crop`` (see ``cytotune crop --help``)."""

    size: int = 64
    channel: str | int | None = None
    channel_names: tuple[str, ...] | None = None
    channel_axis: str = "auto"
    clean: bool = False
    min_area: int = 16
    max_area: int | None = None
    finder: str = "classical"
    finder_args: dict = field(default_factory=dict)
    default_label: str = "unlabelled"
    montages: int = 20
    rows_per_shard: int = 4096
    name: str | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not 8 <= self.size <= 1024:
            raise ValueError(f"--size must be within [8, 1024] px, got {self.size}")
        if self.min_area < 1:
            raise ValueError(f"--min-area must be >= 1 px, got {self.min_area}")
        if self.max_area is not None and self.max_area < self.min_area:
            raise ValueError(f"--max-area {self.max_area} is below --min-area {self.min_area}")
        if self.montages < 0:
            raise ValueError(f"--montages must be >= 0, got {self.montages}")
        if not str(self.default_label).strip():
            raise ValueError("--label must not be empty")
        names = self.channel_names
        if names is not None and len(set(names)) != len(names):
            raise ValueError(f"channel names repeat: {names}")


@dataclass
class CropReport:
    """What ``crop_fields`` did."""

    manifest: object  # engine.data.Manifest
    fields: int
    cells_found: int
    reasons: Counter
    seconds: float

    @property
    def quarantined(self) -> int:
        return sum(self.reasons.values())


def _safe_name(field_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", field_id).strip("_") or "field"


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{out} already exists and is not empty; choose another --out or pass --overwrite"
        )


def _spec(first: np.ndarray, options: CropOptions, records: list[FieldRecord]):
    from cytotune.engine.data import DatasetSpec

    c = first.shape[0]
    names = options.channel_names or tuple(f"ch{i}" for i in range(c))
    if len(names) != c:
        raise ValueError(f"{len(names)} channel names {list(names)} for fields with {c} channel(s)")
    groups = tuple(g for g in ("plate", "well", "field") if any(g in r.groups for r in records))
    spec = DatasetSpec(
        channel_names=tuple(names),
        dtype=str(first.dtype),
        shape=(c, options.size, options.size),
        group_columns=groups,
        metadata_columns=METADATA_COLUMNS,
    )
    return spec, resolve_channel(options.channel, tuple(names))


def crop_fields(
    source: str | Path,
    out: str | Path,
    options: CropOptions | None = None,
    *,
    finder: Finder | None = None,
    progress: bool = True,
) -> CropReport:
    """Find the cells of every field of ``source`` and write their crops as a dataset at ``out``.

    Args:
        source: folder of field images or an index table (see :func:`list_fields`).
        out: dataset directory to create.
        options: crop settings (defaults: 64 px crops, classical finder, channel 0).
        finder: a ready finder (overrides ``options.finder``).
        progress: show a progress bar.

    Returns:
        A :class:`CropReport` with the manifest and the quarantine counts by reason.
    """
    from cytotune.engine.data import DatasetWriter
    from tqdm.auto import tqdm

    options = options or CropOptions()
    out = Path(out)
    _check_out(out, options.overwrite)
    records = list_fields(source)
    finder = finder or create_finder(options.finder, **options.finder_args)
    staging = make_staging_dir(out.parent / f"{out.name}.crop")
    (staging / "montage").mkdir()
    start = time.perf_counter()
    writer, channel, pending = None, 0, []
    reasons: Counter = Counter()
    cells, per_field = [], []
    bar = tqdm(records, unit="field", desc="crop", disable=not progress)
    try:
        for n_done, rec in enumerate(bar):
            try:
                image = read_field(rec.path, options.channel_axis)
            except (ValueError, OSError) as exc:
                pending.append((rec.field_id, rec.source, f"field unreadable: {exc}"))
                reasons["field unreadable"] += 1
                continue
            if writer is None:
                spec, channel = _spec(image, options, records)
                provenance = {
                    "generator": "cytotune crop",
                    "source": str(source),
                    "finder": finder.describe(),
                    "options": {k: v for k, v in asdict(options).items() if k != "finder_args"},
                }
                writer = DatasetWriter(
                    out, spec, name=options.name, rows_per_shard=options.rows_per_shard,
                    overwrite=options.overwrite, provenance=provenance,
                )  # fmt: skip
            if image.shape[0] != writer.spec.shape[0]:
                reason = (
                    f"field has {image.shape[0]} channel(s), the dataset {writer.spec.shape[0]}"
                )
                pending.append((rec.field_id, rec.source, reason))
                reasons["field channel count"] += 1
                continue
            t0 = time.perf_counter()
            labels = finder.find(image[channel])
            cuts = cut_cells(
                image, labels, options.size,
                min_area=options.min_area, max_area=options.max_area, clean=options.clean,
            )  # fmt: skip
            accepted = 0
            label = rec.label or options.default_label
            for cut in cuts:
                cell_id = f"{rec.field_id}/cell{cut.index:05d}"
                reason = cut.reason
                if reason is None:
                    ok = writer.add(
                        cell_id, cut.image, label=label, groups=rec.groups,
                        metadata=cut.metadata, mask=cut.mask, source=rec.source,
                    )  # fmt: skip
                    reason = None if ok else writer.quarantined[-1]["reason"]
                else:
                    writer.quarantine(cell_id, rec.source, reason)
                accepted += reason is None
                if reason is not None:
                    reasons[reason.split(":")[0]] += 1
                cells.append({
                    "cell_id": cell_id, "field": rec.field_id, "label": label,
                    "status": "accepted" if reason is None else "quarantined",
                    "reason": reason or "", **cut.metadata,
                })  # fmt: skip
            per_field.append({
                "field": rec.field_id, "path": rec.source, "label": label, "cells": len(cuts),
                "accepted": accepted, "quarantined": len(cuts) - accepted,
                "seconds": round(time.perf_counter() - t0, 4),
            })  # fmt: skip
            if n_done < options.montages:
                field_montage(
                    image[channel], labels, cuts, staging / "montage" / f"{_safe_name(rec.field_id)}.png",
                    options.size, title=f"{rec.field_id} [{label}]",
                )  # fmt: skip
            bar.set_postfix(cells=len(cells), refresh=False)
        if writer is None:
            raise ValueError(f"no field of {source} could be read: {pending[:3]}")
        for entry in pending:
            writer.quarantine(*entry)
        manifest = writer.close()
    except BaseException:
        if writer is not None and not writer._closed:
            writer.abort()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        bar.close()
    _write_tables(staging, cells, per_field)
    publish_directory(staging, out / CROP_DIR)
    return CropReport(manifest, len(records), len(cells), reasons, time.perf_counter() - start)


def _write_tables(staging: Path, cells: list[dict], per_field: list[dict]) -> None:
    import pandas as pd

    columns = ["cell_id", "field", "label", "status", "reason", *METADATA_COLUMNS]
    pd.DataFrame(cells, columns=columns).to_parquet(staging / "cells.parquet", index=False)
    pd.DataFrame(per_field).to_csv(staging / "fields.csv", index=False)
