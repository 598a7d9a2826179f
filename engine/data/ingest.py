"""Ingest: read a user's crops, validate them, and write a cytotune dataset.

Nothing is dropped silently: every crop that cannot be read or does not fit the dataset contract
lands in ``quarantine.parquet`` with its reason, and the summary counts them.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..pools import worker_pool
from .readers import (
    CHANNEL_AXES,
    install_readers,
    normalise_dtype,
    read_image,
    registered_readers,
    to_chw,
)
from .schema import Manifest
from .sources import CropRecord, list_source
from .transforms import FIT_MODES, fit
from .writer import DatasetSpec, DatasetWriter


@dataclass(frozen=True)
class IngestOptions:
    """Validated ingest settings (see ``cytotune ingest --help``)."""

    channel_names: tuple[str, ...] | None = None
    channel_order: tuple[int, ...] | None = None
    channel_axis: str = "auto"
    size: tuple[int, int] | None = None
    fit_mode: str = "pad"
    targets: tuple[str, ...] = ()
    groups: tuple[str, ...] | None = None
    max_bad_fraction: float = 0.01
    workers: int = 0
    rows_per_shard: int = 4096
    name: str | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.channel_axis not in CHANNEL_AXES:
            raise ValueError(f"--channel-axis {self.channel_axis!r} is not one of {CHANNEL_AXES}")
        if self.fit_mode not in FIT_MODES:
            raise ValueError(f"--fit {self.fit_mode!r} is not one of {FIT_MODES}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(
                f"--max-bad-fraction must be within [0, 1], got {self.max_bad_fraction}"
            )
        if self.channel_order is not None and min(self.channel_order, default=0) < 0:
            raise ValueError(f"--channel-order indices must be >= 0, got {self.channel_order}")
        names, order = self.channel_names, self.channel_order
        if names and order and len(names) != len(order):
            raise ValueError(
                f"{len(names)} channel names for {len(order)} channels in --channel-order"
            )
        if names and len(set(names)) != len(names):
            raise ValueError(f"channel names repeat: {names}")


@dataclass
class IngestReport:
    """What ingest did: the manifest plus quarantine counts by reason."""

    manifest: Manifest
    total: int
    reasons: Counter = field(default_factory=Counter)

    @property
    def bad_fraction(self) -> float:
        return self.manifest.num_quarantined / max(self.total, 1)


def _read(path: Path, channel_axis: str) -> np.ndarray:
    if not path.is_file():
        raise ValueError(f"file not found: {path}")
    try:
        return read_image(path, channel_axis)
    except ValueError as exc:
        if "unsupported file type" in str(exc):
            raise
        raise ValueError(f"unreadable file {path.name}: {exc}") from exc
    except Exception as exc:  # decoder errors (truncated PNG, corrupt TIFF, ...)
        raise ValueError(f"unreadable file {path.name}: {type(exc).__name__}: {exc}") from exc


def _load(record: CropRecord, options: IngestOptions):
    """Read and shape one crop -> (image, mask, error). Runs in worker processes."""
    try:
        if record.array is not None:
            image = to_chw(record.array, options.channel_axis)
        elif record.path is not None:
            image = _read(record.path, options.channel_axis)
        else:
            raise ValueError(
                f"no image for this row ({record.source}): unsupported file type or empty path"
            )
        if options.channel_order is not None:
            if max(options.channel_order) >= image.shape[0]:
                raise ValueError(
                    f"wrong channel count: --channel-order {list(options.channel_order)} needs "
                    f"{max(options.channel_order) + 1} channels, crop has {image.shape[0]}"
                )
            image = image[list(options.channel_order)]
        image = normalise_dtype(image)
        mask = record.mask
        if record.mask_path is not None:
            mask = _read(record.mask_path, "auto")[0]
        if mask is not None:
            mask = (np.asarray(mask) > 0).astype(np.uint8)
        if options.size is not None:
            image = fit(image, options.size, options.fit_mode)
            if mask is not None:
                mask = fit(mask, options.size, options.fit_mode, nearest=True)
        return np.ascontiguousarray(image), mask, None
    except ValueError as exc:
        return None, None, str(exc)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a quarantine reason
        return None, None, f"failed: {type(exc).__name__}: {exc}"


def _load_star(args):
    return _load(*args)


def ingest(
    source: str | Path,
    out_dir: str | Path,
    options: IngestOptions | None = None,
    progress: bool = True,
) -> IngestReport:
    """Ingest ``source`` into a dataset at ``out_dir`` and return the report.

    The dataset's channel count, dtype and size come from the options, else from the first
    readable crop; crops that disagree are quarantined.
    """
    options = options or IngestOptions()
    listing = list_source(
        source,
        targets=list(options.targets),
        groups=None if options.groups is None else list(options.groups),
    )
    records = listing.records
    task = "regression" if options.targets else "classification"
    workers = options.workers or min(os.cpu_count() or 1, 8)
    provenance = {
        "command": "ingest",
        "source": str(Path(source).resolve()),
        "source_kind": listing.kind,
        "options": {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in options.__dict__.items()
            if k not in ("workers", "overwrite")
        },
    }
    writer = None
    pending: list[tuple[CropRecord, str]] = []  # quarantined before the writer exists
    jobs = ((r, options) for r in records)
    pool = None
    if workers > 1 and len(records) > 64:  # readers registered here reach unforked workers too
        pool = worker_pool(workers, initializer=install_readers, initargs=(registered_readers(),))
    results = pool.map(_load_star, jobs, chunksize=32) if pool else map(_load_star, jobs)
    try:
        for record, (image, mask, error) in tqdm(
            zip(records, results),
            total=len(records),
            desc="ingest",
            unit="crop",
            disable=not progress,
        ):
            if error is not None:
                if writer is None:
                    pending.append((record, error))
                else:
                    writer.quarantine(record.cell_id, record.source, error)
                continue
            if writer is None:
                spec = DatasetSpec(
                    channel_names=options.channel_names
                    or tuple(f"ch{i}" for i in range(image.shape[0])),
                    dtype=str(image.dtype),
                    shape=(
                        len(options.channel_names) if options.channel_names else image.shape[0],
                        *image.shape[1:],
                    ),
                    task=task,
                    group_columns=tuple(listing.group_columns),
                    targets=tuple(options.targets),
                )
                writer = DatasetWriter(
                    out_dir,
                    spec,
                    name=options.name,
                    rows_per_shard=options.rows_per_shard,
                    overwrite=options.overwrite,
                    provenance=provenance,
                )
                for rec, err in pending:
                    writer.quarantine(rec.cell_id, rec.source, err)
            writer.add(
                record.cell_id,
                image,
                label=record.label,
                targets=record.targets,
                groups=record.groups,
                mask=mask,
                source=record.source,
            )
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    if writer is None:
        reasons = Counter(_reason_kind(e) for _, e in pending)
        raise ValueError(
            f"no crop of {source} could be read ({len(records)} tried): {dict(reasons)}; first error: {pending[0][1] if pending else 'source is empty'}"
        )
    reasons = Counter(_reason_kind(q["reason"]) for q in writer.quarantined)
    manifest = writer.close()
    return IngestReport(manifest=manifest, total=len(records), reasons=reasons)


def _reason_kind(reason: str) -> str:
    """Group quarantine reasons for the summary ("wrong channel count: got 2 ..." -> "wrong channel count")."""
    head = reason.split(":")[0]
    if head.startswith("duplicate cell id"):
        return "duplicate cell id"
    if head.startswith("size "):
        return "size differs"
    return head
