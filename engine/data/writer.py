"""Streaming writer for cytotune datasets: sharded Parquet + quarantine table + manifest.

Used by ``ingest`` and ``synth`` alike, so both produce the same contract. Everything is written
into a staging directory next to the target and renamed into place at the end: a crash never
leaves a half-written dataset, and an existing dataset is only replaced when asked to.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from cytotune.engine.io import make_staging_dir, publish_directory

from cytotune import engine

from .schema import (
    DATA_DIR,
    QUARANTINE_NAME,
    SUPPORTED_DTYPES,
    TASKS,
    ChannelStats,
    Manifest,
)

_QUARANTINE_SCHEMA = pa.schema(
    [("cell_id", pa.string()), ("source", pa.string()), ("reason", pa.string())]
)


@dataclass(frozen=True)
class DatasetSpec:
    """What every row of a dataset shares: task, channels, pixel type and extra columns."""

    channel_names: tuple[str, ...]
    dtype: str
    shape: tuple[int, int, int]  # (C, H, W)
    task: str = "classification"
    group_columns: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    metadata_columns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task {self.task!r} is not one of {TASKS}")
        if self.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {SUPPORTED_DTYPES}")
        if len(self.shape) != 3 or self.shape[0] != len(self.channel_names):
            raise ValueError(
                f"shape {self.shape} must be (C, H, W) with C = {len(self.channel_names)}"
            )
        if self.task == "regression" and not self.targets:
            raise ValueError("a regression dataset needs at least one target column name")
        names = list(self.group_columns) + list(self.targets) + list(self.metadata_columns)
        if len(set(names)) != len(names):
            raise ValueError(f"column names repeat across groups/targets/metadata: {names}")
        reserved = {"cell_id", "image", "dtype", "shape", "mask", "evidence", "label", "source"}
        clash = reserved.intersection(names)
        if clash:
            raise ValueError(f"column names {sorted(clash)} are reserved by the dataset schema")


class _PixelStats:
    """Exact streaming per-channel statistics; percentiles from histograms (integers) or a strided sample."""

    def __init__(self, channels: int, dtype: str) -> None:
        self.dtype = dtype
        self.count = 0
        self.sum = np.zeros(channels)
        self.sumsq = np.zeros(channels)
        self.min = np.full(channels, np.inf)
        self.max = np.full(channels, -np.inf)
        bins = {"uint8": 256, "uint16": 65536}.get(dtype)
        self.hist = np.zeros((channels, bins), dtype=np.int64) if bins else None
        self.samples: list[np.ndarray] = []

    def update(self, image: np.ndarray) -> None:
        flat = image.reshape(image.shape[0], -1)
        as_float = flat.astype(np.float64)
        self.count += flat.shape[1]
        self.sum += as_float.sum(axis=1)
        self.sumsq += np.square(as_float).sum(axis=1)
        self.min = np.minimum(self.min, as_float.min(axis=1))
        self.max = np.maximum(self.max, as_float.max(axis=1))
        if self.hist is not None:
            for c in range(flat.shape[0]):
                self.hist[c] += np.bincount(flat[c], minlength=self.hist.shape[1])
        else:
            self.samples.append(flat[:, ::7].astype(np.float32))

    def _percentile(self, q: float) -> list[float]:
        if self.count == 0:
            return [0.0] * len(self.sum)
        if self.hist is not None:
            cdf = np.cumsum(self.hist, axis=1)
            rank = q / 100.0 * (cdf[:, -1] - 1)
            return [float(np.searchsorted(cdf[c], rank[c], side="right")) for c in range(len(cdf))]
        return np.percentile(np.concatenate(self.samples, axis=1), q, axis=1).tolist()

    def result(self) -> ChannelStats:
        n = max(self.count, 1)
        mean = self.sum / n
        std = np.sqrt(np.maximum(self.sumsq / n - mean**2, 0.0))
        return ChannelStats(
            mean=mean.tolist(),
            std=std.tolist(),
            min=np.where(np.isfinite(self.min), self.min, 0).tolist(),
            max=np.where(np.isfinite(self.max), self.max, 0).tolist(),
            p01=self._percentile(1.0),
            p99=self._percentile(99.0),
        )


class DatasetWriter:
    """Append validated crops, then ``close()`` to publish shards, quarantine and manifest.

    Args:
        out_dir: target dataset directory.
        spec: shared properties of all rows.
        name: dataset name for the manifest (defaults to the directory name).
        rows_per_shard: Parquet rows per shard file.
        overwrite: replace an existing dataset at ``out_dir`` (otherwise refuse).
        provenance: free-form description of where the data came from (command, options).
    """

    def __init__(
        self,
        out_dir: str | Path,
        spec: DatasetSpec,
        *,
        name: str | None = None,
        rows_per_shard: int = 4096,
        overwrite: bool = False,
        provenance: dict | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and any(self.out_dir.iterdir()) and not overwrite:
            raise FileExistsError(
                f"{self.out_dir} already exists and is not empty; choose another --out or pass "
                "--overwrite to replace it"
            )
        if rows_per_shard < 1:
            raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
        self.spec = spec
        self.name = name or self.out_dir.name
        self.rows_per_shard = rows_per_shard
        self.provenance = provenance or {}
        self.staging = make_staging_dir(self.out_dir)
        (self.staging / DATA_DIR).mkdir()
        self._rows: list[dict] = []
        self._shards: list[str] = []
        self._digests: dict[str, bytes] = {}
        self._class_counts: dict[str, int] = {}
        self._quarantine: list[dict] = []
        self._has_mask = False
        self._has_evidence = False
        self._stats = _PixelStats(spec.shape[0], spec.dtype)
        self._closed = False

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            if not self._closed:
                self.close()
        else:
            self.abort()

    @property
    def num_rows(self) -> int:
        return len(self._digests)

    @property
    def num_quarantined(self) -> int:
        return len(self._quarantine)

    @property
    def quarantined(self) -> list[dict]:
        """Rows refused so far: ``cell_id``, ``source``, ``reason``."""
        return list(self._quarantine)

    def quarantine(self, cell_id: str, source: str, reason: str) -> None:
        """Record a crop that could not be accepted, with the reason, instead of dropping it."""
        self._quarantine.append({"cell_id": str(cell_id), "source": str(source), "reason": reason})

    def check(self, cell_id: str, image: np.ndarray, label=None, targets=None) -> str | None:
        """Return why this crop cannot enter the dataset, or None when it can."""
        spec = self.spec
        if not cell_id:
            return "empty cell id"
        if cell_id in self._digests:
            return f"duplicate cell id {cell_id!r}"
        if image.ndim != 3 or image.shape[0] != spec.shape[0]:
            got = image.shape[0] if image.ndim == 3 else f"{image.ndim}-D array"
            return f"wrong channel count: got {got}, dataset has {spec.shape[0]} ({', '.join(spec.channel_names)})"
        if tuple(image.shape[1:]) != tuple(spec.shape[1:]):
            return (
                f"size {image.shape[1]}x{image.shape[2]} differs from the dataset's "
                f"{spec.shape[1]}x{spec.shape[2]}; pass --size and --fit pad|crop|resize to unify sizes"
            )
        if str(image.dtype) != spec.dtype:
            return f"mixed dtypes: crop is {image.dtype}, dataset is {spec.dtype}"
        if image.dtype.kind == "f" and not np.isfinite(image).all():
            return "NaN or inf pixel values"
        if spec.task == "classification" and (label is None or str(label).strip() == ""):
            return "empty label"
        if spec.task == "regression":
            values = [None if targets is None else targets.get(t) for t in spec.targets]
            if any(v is None or not np.isfinite(float(v)) for v in values):
                return f"missing or non-finite regression target(s) {list(spec.targets)}"
        return None

    def add(
        self,
        cell_id: str,
        image: np.ndarray,
        *,
        label: str | None = None,
        targets: dict[str, float] | None = None,
        groups: dict[str, str] | None = None,
        metadata: dict | None = None,
        mask: np.ndarray | None = None,
        evidence: np.ndarray | None = None,
        source: str = "",
    ) -> bool:
        """Validate and append one crop; invalid crops go to quarantine. Returns True if accepted."""
        cell_id = str(cell_id)
        reason = self.check(cell_id, image, label, targets)
        h, w = self.spec.shape[1:]
        for kind, extra in (("mask", mask), ("evidence mask", evidence)):
            if reason is None and extra is not None and extra.shape != (h, w):
                reason = f"{kind} shape {extra.shape} differs from crop size ({h}, {w})"
        if reason is not None:
            self.quarantine(cell_id, source, reason)
            return False
        image = np.ascontiguousarray(image)
        row = {
            "cell_id": cell_id,
            "image": image.tobytes(),
            "dtype": self.spec.dtype,
            "shape": list(image.shape),
            "mask": None if mask is None else np.ascontiguousarray(mask, dtype=np.uint8).tobytes(),
            "evidence": None
            if evidence is None
            else np.ascontiguousarray(evidence, dtype=np.uint8).tobytes(),
            "label": None if label is None else str(label),
            "source": str(source),
        }
        for col in self.spec.group_columns:
            value = (groups or {}).get(col)
            row[col] = None if value is None else str(value)
        for col in self.spec.targets:
            row[col] = float((targets or {}).get(col, np.nan))
        for col in self.spec.metadata_columns:
            row[col] = (metadata or {}).get(col)
        self._has_mask |= mask is not None
        self._has_evidence |= evidence is not None
        self._stats.update(image)
        if label is not None:
            self._class_counts[str(label)] = self._class_counts.get(str(label), 0) + 1
        self._digests[cell_id] = _row_digest(row)
        self._rows.append(row)
        if len(self._rows) >= self.rows_per_shard:
            self._flush()
        return True

    def _schema(self) -> pa.Schema:
        fields = [
            ("cell_id", pa.string()),
            ("image", pa.binary()),
            ("dtype", pa.string()),
            ("shape", pa.list_(pa.int32())),
            ("mask", pa.binary()),
            ("evidence", pa.binary()),
            ("label", pa.string()),
            ("source", pa.string()),
        ]
        fields += [(c, pa.string()) for c in self.spec.group_columns]
        fields += [(c, pa.float64()) for c in self.spec.targets]
        return pa.schema(fields)

    def _flush(self) -> None:
        if not self._rows:
            return
        schema = self._schema()
        columns = {name: [r[name] for r in self._rows] for name in schema.names}
        table = pa.table(columns, schema=schema)
        for col in self.spec.metadata_columns:
            table = table.append_column(col, pa.array([r[col] for r in self._rows]))
        shard = f"{DATA_DIR}/part-{len(self._shards):05d}.parquet"
        pq.write_table(table, self.staging / shard, compression="zstd", row_group_size=1024)
        self._shards.append(shard)
        self._rows = []

    def _content_hash(self) -> str:
        """Order-independent hash of all rows plus the dataset-level contract."""
        h = hashlib.sha256()
        spec = self.spec
        h.update(
            repr((spec.channel_names, spec.dtype, spec.shape, spec.task, spec.targets)).encode()
        )
        for cell_id in sorted(self._digests):
            h.update(cell_id.encode())
            h.update(self._digests[cell_id])
        return h.hexdigest()

    def close(self) -> Manifest:
        """Publish the dataset atomically and return its manifest."""
        if self._closed:
            raise RuntimeError("writer already closed")
        if self.num_rows == 0:
            self.abort()
            raise ValueError(
                f"no crop was accepted ({self.num_quarantined} quarantined); nothing written to "
                f"{self.out_dir}. Check the input paths and the quarantine reasons."
            )
        self._flush()
        classes = sorted(self._class_counts)
        manifest = Manifest(
            name=self.name,
            task=self.spec.task,
            channel_names=list(self.spec.channel_names),
            dtype=self.spec.dtype,
            shape=list(self.spec.shape),
            num_rows=self.num_rows,
            content_hash=self._content_hash(),
            stats=self._stats.result(),
            shards=self._shards,
            label_map={c: i for i, c in enumerate(classes)}
            if self.spec.task == "classification"
            else {},
            class_counts={c: self._class_counts[c] for c in classes},
            targets=list(self.spec.targets),
            group_columns=list(self.spec.group_columns),
            metadata_columns=list(self.spec.metadata_columns),
            has_mask=self._has_mask,
            has_evidence=self._has_evidence,
            num_quarantined=self.num_quarantined,
            provenance={"cytotune_version": engine.__version__, **self.provenance},
        )
        quarantine = pa.Table.from_pylist(self._quarantine, schema=_QUARANTINE_SCHEMA)
        pq.write_table(quarantine, self.staging / QUARANTINE_NAME)
        manifest.save(self.staging)
        self._publish()
        self._closed = True
        return manifest

    def _publish(self) -> None:
        publish_directory(self.staging, self.out_dir)

    def abort(self) -> None:
        """Discard everything staged; the target directory is untouched."""
        shutil.rmtree(self.staging, ignore_errors=True)
        self._closed = True


def _row_digest(row: dict) -> bytes:
    h = hashlib.sha256()
    for key in sorted(row):
        value = row[key]
        h.update(key.encode())
        h.update(value if isinstance(value, bytes) else repr(value).encode())
    return h.digest()
