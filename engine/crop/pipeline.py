"""``crop_fields``: fields -> finder -> crops -> a cytotune dataset, with nothing dropped silently.

Every detected cell becomes a row (crop, mask, label inherited from its field or well, group
columns ``plate``/``well``/``field``, centroid/box/area metadata, ``source`` = the field file)
or a quarantine entry with the reason. Unreadable fields and fields with the wrong channel count
are quarantined too (cell id = the field id). Beside the Parquet shards, ``DATASET/crop/`` holds
``cells.parquet`` (every detection, accepted or not), ``fields.csv`` (per-field counts) and
``montage/<field>.png`` (detections drawn on the field). With ``workers > 1`` the fields are read,
searched and cut in worker processes (``work.py``) while this process writes them in the
listing's order: the dataset is the same for any number of workers. With ``cell_channel`` the
nuclei are grown into cell bodies on that channel (``cells.py``) and the bodies are cropped; the
metadata then holds the nucleus's centroid/box/area and the body's (``body_*`` columns).
"""

from __future__ import annotations

import re
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cytotune.engine.io import atomic_write_bytes, make_staging_dir, publish_directory

from .cells import CELL_DEFAULTS
from .fields import FieldRecord, list_fields, resolve_channel
from .finders import Finder, create_finder
from .work import default_workers, field_results

CROP_DIR = "crop"
METADATA_COLUMNS = (
    "centroid_y", "centroid_x", "box_y0", "box_x0", "box_y1", "box_x1", "area",
)  # fmt: skip
# --cell-channel: the columns above are the nucleus's, these the cell body's (what is cropped).
BODY_COLUMNS = tuple(f"body_{c}" for c in METADATA_COLUMNS)


def metadata_columns(options: CropOptions) -> tuple[str, ...]:
    """The metadata columns of a crop dataset made with ``options``."""
    return METADATA_COLUMNS + (BODY_COLUMNS if options.cell_channel is not None else ())


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
    workers: int = 0  # processes for reading, finding and cutting; 0: the CPU count, at most 4
    cell_channel: str | int | None = None  # grow cell bodies on it and crop those (None: nuclei)

    def __post_init__(self) -> None:
        if not 8 <= self.size <= 1024:
            raise ValueError(f"--size must be within [8, 1024] px, got {self.size}")
        if self.min_area < 1:
            raise ValueError(f"--min-area must be >= 1 px, got {self.min_area}")
        if self.max_area is not None and self.max_area < self.min_area:
            raise ValueError(f"--max-area {self.max_area} is below --min-area {self.min_area}")
        if self.workers < 0:
            raise ValueError(f"--workers must be >= 1 (or 0 for the CPU count), got {self.workers}")
        if self.montages < 0:
            raise ValueError(f"--montages must be >= 0, got {self.montages}")
        if not str(self.default_label).strip():
            raise ValueError("--label must not be empty")
        if self.cell_channel is not None and not str(self.cell_channel).strip():
            raise ValueError("--cell-channel must name a channel (or give its index)")
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


def _spec(c: int, dtype: str, options: CropOptions, records: list[FieldRecord]):
    from cytotune.engine.data import DatasetSpec

    names = options.channel_names or tuple(f"ch{i}" for i in range(c))
    if len(names) != c:
        raise ValueError(f"{len(names)} channel names {list(names)} for fields with {c} channel(s)")
    groups = tuple(g for g in ("plate", "well", "field") if any(g in r.groups for r in records))
    spec = DatasetSpec(
        channel_names=tuple(names),
        dtype=dtype,
        shape=(c, options.size, options.size),
        group_columns=groups,
        metadata_columns=metadata_columns(options),
    )
    if options.cell_channel is not None:
        try:
            resolve_channel(options.cell_channel, tuple(names))
        except ValueError as exc:
            raise ValueError(f"--cell-channel: {exc}".replace("--channel", "channel")) from exc
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
    from tqdm.auto import tqdm

    options = options or CropOptions()
    out = Path(out)
    _check_out(out, options.overwrite)
    records = list_fields(source)
    finder = finder or create_finder(options.finder, **options.finder_args)
    staging = make_staging_dir(out.parent / f"{out.name}.crop")
    (staging / "montage").mkdir()
    start = time.perf_counter()
    writer, pending = None, []
    reasons: Counter = Counter()
    cells, per_field = [], []
    workers = options.workers or default_workers()
    bar = None
    try:
        with field_results(records, options, finder, workers) as results:
            bar = tqdm(total=len(records), unit="field", desc="crop", disable=not progress)
            for rec, res in zip(records, results):
                bar.update(1)
                if res.error is not None:
                    pending.append((rec.field_id, rec.source, res.error))
                    reasons["field unreadable"] += 1
                    continue
                if writer is None:
                    writer = _writer(out, source, res, options, records, finder)
                if res.channels != writer.spec.shape[0]:
                    reason = (
                        f"field has {res.channels} channel(s), the dataset {writer.spec.shape[0]}"
                    )
                    pending.append((rec.field_id, rec.source, reason))
                    reasons["field channel count"] += 1
                    continue
                assert res.cuts is not None, "a field matching the dataset's channels is searched"
                accepted = 0
                label = rec.label or options.default_label
                for cut in res.cuts:
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
                    "field": rec.field_id, "path": rec.source, "label": label,
                    "cells": len(res.cuts), "accepted": accepted,
                    "quarantined": len(res.cuts) - accepted, "seconds": round(res.seconds, 4),
                })  # fmt: skip
                if res.montage is not None:
                    name = f"{_safe_name(rec.field_id)}.png"
                    atomic_write_bytes(staging / "montage" / name, res.montage)
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
        if bar is not None:
            bar.close()
    _write_tables(staging, cells, per_field, metadata_columns(options))
    publish_directory(staging, out / CROP_DIR)
    return CropReport(manifest, len(records), len(cells), reasons, time.perf_counter() - start)


def _writer(out: Path, source, first, options: CropOptions, records, finder: Finder):
    """The dataset writer, its contract taken from the first readable field."""
    from cytotune.engine.data import DatasetWriter

    spec, _ = _spec(first.channels, first.dtype, options, records)
    skip = ("finder_args", "workers")  # the dataset is the same for any number of workers
    settings = {k: v for k, v in asdict(options).items() if k not in skip}
    if settings["cell_channel"] is None:
        del settings["cell_channel"]  # a nuclei dataset reads as it did before the option
    provenance = {
        "generator": "cytotune crop",
        "source": str(source),
        "finder": finder.describe(),
        "options": settings,
    }
    if options.cell_channel is not None:
        provenance["cells"] = {"grown": "seeded watershed", **CELL_DEFAULTS}
    return DatasetWriter(
        out, spec, name=options.name, rows_per_shard=options.rows_per_shard,
        overwrite=options.overwrite, provenance=provenance,
    )  # fmt: skip


def _write_tables(staging: Path, cells: list[dict], per_field: list[dict], metadata) -> None:
    import pandas as pd

    columns = ["cell_id", "field", "label", "status", "reason", *metadata]
    pd.DataFrame(cells, columns=columns).to_parquet(staging / "cells.parquet", index=False)
    pd.DataFrame(per_field).to_csv(staging / "fields.csv", index=False)
