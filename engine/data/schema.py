"""The dataset contract: Parquet row schema and the typed ``manifest.json`` beside the shards.

One row per cell crop. Pixels are stored decoded (raw C-order bytes of a C x H x W array) so the
hot path never decodes PNG. Every dataset has one dtype and one shape for all its crops.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from cytotune.engine.io import atomic_write_text

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
DATA_DIR = "data"
QUARANTINE_NAME = "quarantine.parquet"
FOLDS_DIR = "folds"
TASKS = ("classification", "regression")
SUPPORTED_DTYPES = ("uint8", "uint16", "float32")

# Columns with a fixed meaning; everything else is user metadata (groups, targets, extras).
CORE_COLUMNS = ("cell_id", "image", "dtype", "shape", "mask", "evidence", "label", "source")


@dataclass(frozen=True)
class ChannelStats:
    """Per-channel pixel statistics over the whole dataset (raw intensity units)."""

    mean: list[float]
    std: list[float]
    min: list[float]
    max: list[float]
    p01: list[float]
    p99: list[float]


@dataclass
class Manifest:
    """Everything a consumer needs to interpret the shards, written as ``manifest.json``."""

    name: str
    task: str
    channel_names: list[str]
    dtype: str
    shape: list[int]  # (C, H, W)
    num_rows: int
    content_hash: str
    stats: ChannelStats
    shards: list[str]
    label_map: dict[str, int] = field(default_factory=dict)
    class_counts: dict[str, int] = field(default_factory=dict)
    targets: list[str] = field(default_factory=list)
    group_columns: list[str] = field(default_factory=list)
    metadata_columns: list[str] = field(default_factory=list)
    has_mask: bool = False
    has_evidence: bool = False
    num_quarantined: int = 0
    provenance: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task {self.task!r} is not one of {TASKS}")
        if len(self.shape) != 3 or len(self.channel_names) != self.shape[0]:
            raise ValueError(
                f"shape {self.shape} must be (C, H, W) with C = {len(self.channel_names)} channel names"
            )

    @property
    def num_channels(self) -> int:
        return self.shape[0]

    @property
    def classes(self) -> list[str]:
        """Class names ordered by their integer index."""
        return sorted(self.label_map, key=self.label_map.__getitem__)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Manifest:
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(
                f"dataset schema version {version} is not supported (this cytotune reads version "
                f"{SCHEMA_VERSION}); re-run `cytotune ingest` on the source to rebuild it"
            )
        data = dict(data)
        data["stats"] = ChannelStats(**data["stats"])
        return cls(**data)

    def save(self, directory: str | Path) -> None:
        atomic_write_text(Path(directory) / MANIFEST_NAME, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> Manifest:
        path = Path(directory) / MANIFEST_NAME
        if not Path(directory).exists():
            raise FileNotFoundError(
                f"dataset {directory} does not exist (resolved: {Path(directory).resolve()}); "
                "check the path, or create it with `cytotune ingest SOURCE --out DIR` or "
                "`cytotune synth --out DIR`"
            )
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: {directory} is not a cytotune dataset; create one with "
                "`cytotune ingest SOURCE --out DIR` or `cytotune synth --out DIR`"
            )
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{path} is not valid JSON ({exc}); re-run ingest to rebuild it"
            ) from exc
        return cls.from_dict(data)


def decode_images(blobs, dtype: str, shape) -> np.ndarray:
    """Turn raw image blobs of one dtype and shape into an (N, C, H, W) array.

    ``blobs`` is an Arrow binary (chunked) array, decoded without copying per row, or a sequence
    of ``bytes``.
    """
    if isinstance(blobs, pa.ChunkedArray):
        blobs = blobs.combine_chunks()
    if isinstance(blobs, pa.BinaryArray) and blobs.null_count == 0:
        if len(blobs) == 0:
            return np.empty((0, *shape), dtype=dtype)
        offsets = np.frombuffer(blobs.buffers()[1], dtype=np.int32)[
            blobs.offset : blobs.offset + len(blobs) + 1
        ]
        start, stop = int(offsets[0]), int(offsets[-1])
        data = np.frombuffer(blobs.buffers()[2], dtype=np.uint8)[start:stop]
        return data.view(dtype).reshape(len(blobs), *shape)
    blobs = [b.as_py() if hasattr(b, "as_py") else b for b in blobs]
    if not blobs:
        return np.empty((0, *shape), dtype=dtype)
    return np.frombuffer(b"".join(blobs), dtype=dtype).reshape(len(blobs), *shape)


def decode_masks(blobs, height: int, width: int) -> np.ndarray:
    """Decode mask blobs (uint8 H x W, None allowed: treated as all-foreground)."""
    out = np.ones((len(blobs), height, width), dtype=np.uint8)
    for i, blob in enumerate(blobs):
        blob = blob.as_py() if hasattr(blob, "as_py") else blob
        if blob is not None:
            out[i] = np.frombuffer(blob, dtype=np.uint8).reshape(height, width)
    return out
