"""Read side of the dataset contract: manifest + shards -> arrays and metadata (in process)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .schema import QUARANTINE_NAME, Manifest, decode_images, decode_masks


class CellDataset:
    """An ingested dataset directory: ``CellDataset(path).images()``, ``.metadata()``, ``.labels()``.

    ``keep_decoded``: in-process loaders of this instance decode the rows once and share them
    (``decoded_cache``), so the K folds of a trial read and decode the Parquet shards once
    instead of twice per fold; the decoded rows stay in memory as long as the instance.
    """

    def __init__(self, path: str | Path, keep_decoded: bool = False) -> None:
        self.path = Path(path)
        self.decoded_cache: dict | None = {} if keep_decoded else None
        self.manifest = Manifest.load(self.path)
        missing = [s for s in self.manifest.shards if not (self.path / s).is_file()]
        if missing:
            raise FileNotFoundError(
                f"dataset {self.path} is incomplete: shard(s) {missing[:3]} missing; re-run ingest"
            )

    def __len__(self) -> int:
        return self.manifest.num_rows

    def __repr__(self) -> str:
        m = self.manifest
        return (
            f"CellDataset({str(self.path)!r}, rows={m.num_rows}, channels={m.channel_names}, "
            f"shape={m.shape}, dtype={m.dtype}, task={m.task})"
        )

    @property
    def shard_paths(self) -> list[str]:
        return [str(self.path / s) for s in self.manifest.shards]

    def table(self, columns: list[str] | None = None) -> pa.Table:
        """All rows as one Arrow table, in shard order."""
        return pa.concat_tables([pq.read_table(p, columns=columns) for p in self.shard_paths])

    def metadata(self) -> pd.DataFrame:
        """Every column except pixel blobs, one row per crop, in storage order."""
        schema = pq.read_schema(self.shard_paths[0])
        columns = [c for c in schema.names if c not in ("image", "mask", "evidence")]
        return self.table(columns).to_pandas()

    def images(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Crops as an (N, C, H, W) array in the dataset dtype (all rows, or the given row indices)."""
        column = self.table(["image"]).column("image")
        if rows is not None:
            column = column.take(pa.array(np.asarray(rows, dtype=np.int64)))
        return decode_images(column, self.manifest.dtype, self.manifest.shape)

    def masks(self, column: str = "mask") -> np.ndarray:
        """Cell masks (or ``column="evidence"``) as (N, H, W) uint8; rows without a mask are all ones."""
        _, h, w = self.manifest.shape
        return decode_masks(self.table([column]).column(column).to_pylist(), h, w)

    def labels(self) -> np.ndarray:
        """Integer class index per row (classification datasets)."""
        if self.manifest.task != "classification":
            raise ValueError(
                f"dataset {self.path} is a {self.manifest.task} dataset; it has no class labels"
            )
        names = self.table(["label"]).column("label").to_pylist()
        return np.array([self.manifest.label_map[n] for n in names], dtype=np.int64)

    def quarantine(self) -> pd.DataFrame:
        """The crops that ingest refused, with the reason for each."""
        path = self.path / QUARANTINE_NAME
        return (
            pq.read_table(path).to_pandas()
            if path.is_file()
            else pd.DataFrame(columns=["cell_id", "source", "reason"])
        )
