"""The results store: one study directory with Parquet tables, configs, checkpoints and Optuna.

Layout (local path or any pyarrow filesystem URI such as ``s3://bucket/studies/NAME``)::

    study.yaml       the resolved study file            study.json   status, hashes, timings
    trials.parquet   one row per trial                  folds.parquet  one row per trial x fold
    epochs.parquet   learning curves (trial, epoch, fold)
    optuna.db        Optuna storage (optuna-dashboard sqlite:///.../optuna.db)
    tune/            Ray Tune's experiment (trial checkpoints: fold_0 ... fold_K-1)

The tables' columns, types and format version are defined once, in
:mod:`cytotune.engine.search.tables`; this class is their only reader and writer. Tables are
rewritten whole through a temporary file and a rename, so readers (the dashboard) never see a
half-written table. Only the search driver writes.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pandas as pd
import pyarrow.fs as pafs
from cytotune.engine.formats import missing
from cytotune.engine.io import atomic_write_bytes

from . import tables
from .tables import TrialRow

TABLES = tuple(tables.FORMATS)


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Filesystem and path for a local path or a URI (s3://, gs://, hdfs://, file://)."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), str(Path(uri).resolve())


class StudyStore:
    """Read and write one study directory."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.fs, self.path = resolve(uri)
        self._tables: dict[str, dict[tuple, dict]] = {name: {} for name in TABLES}
        self._loaded = False

    # -- locations -------------------------------------------------------------------------
    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def join(self, *parts: str) -> str:
        return "/".join([self.path.rstrip("/"), *parts])

    @property
    def tune_dir(self) -> str:
        return self.join("tune")

    @property
    def optuna_url(self) -> str | None:
        return f"sqlite:///{self.join('optuna.db')}" if self.is_local else None

    def exists(self) -> bool:
        return self.fs.get_file_info(self.join("study.json")).type == pafs.FileType.File

    # -- raw files -------------------------------------------------------------------------
    def write_bytes(self, name: str, data: bytes) -> None:
        """Atomic write: temporary file then rename (a move on object stores)."""
        target = self.join(name)
        if self.is_local:
            atomic_write_bytes(target, data)
            return
        self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        tmp = f"{target}.{uuid.uuid4().hex[:8]}.tmp"
        with self.fs.open_output_stream(tmp) as handle:
            handle.write(data)
        self.fs.move(tmp, target)

    def read_bytes(self, name: str) -> bytes:
        with self.fs.open_input_stream(self.join(name)) as handle:
            return handle.read()

    def write_json(self, name: str, data: dict) -> None:
        self.write_bytes(name, json.dumps(data, indent=2, default=str).encode())

    def read_json(self, name: str) -> dict:
        return json.loads(self.read_bytes(name))

    # -- study metadata --------------------------------------------------------------------
    def create(self, config_yaml: str, info: dict) -> None:
        self.write_bytes("study.yaml", config_yaml.encode())
        self.write_json("study.json", {"status": "running", "created": time.time(), **info})

    def status(self) -> dict:
        if not self.exists():
            raise FileNotFoundError(
                f"{self.uri} is not a cytotune study (no study.json); start one with `cytotune search --config study.yaml`"
            )
        return self.read_json("study.json")

    def update_status(self, **fields) -> None:
        self.write_json("study.json", {**self.status(), **fields, "updated": time.time()})

    # -- tables ----------------------------------------------------------------------------
    def table(self, name: str) -> pd.DataFrame:
        """A table as a DataFrame, every fixed column present (no rows when nothing was written
        yet); :class:`~cytotune.engine.search.tables.FormatError` for another format version."""
        tables.format_of(name)
        target = self.join(f"{name}.parquet")
        if self.fs.get_file_info(target).type != pafs.FileType.File:
            return tables.empty_frame(name)
        with self.fs.open_input_file(target) as handle:
            return tables.read_table(name, handle, where=target)

    def _load(self) -> None:
        if self._loaded:
            return
        for name, fmt in tables.FORMATS.items():
            frame = self.table(name)
            for row in frame.to_dict("records"):
                row = {k: v for k, v in row.items() if not missing(v)}
                self._tables[name][fmt.key_of(row)] = row
        self._loaded = True

    def upsert(self, name: str, key: tuple, row: dict) -> None:
        """Insert or update a row (in memory until ``flush``); a column the table's format does
        not define raises FormatError here, at the writer, not in a reader later."""
        fmt = tables.format_of(name)
        for column in row:
            fmt.check_column(column)
        self._load()
        self._tables[name][key] = {**self._tables[name].get(key, {}), **row}

    def rows(self, name: str) -> list[dict]:
        self._load()
        return list(self._tables[name].values())

    def trial(self, trial_id: str) -> TrialRow | None:
        """One trial's row, typed (None when the store has no such trial)."""
        self._load()
        record = self._tables["trials"].get((trial_id,))
        return None if record is None else tables.TRIALS.to_row(record)

    def flush(self) -> None:
        """Write every table atomically, the trials table last: a driver killed mid-flush never
        leaves a trial recorded as completed without its folds and epochs (a resumed search
        takes the store's completed trials as done and records nothing more for them)."""
        self._load()
        for name, rows in sorted(self._tables.items(), key=lambda item: item[0] == "trials"):
            if rows:
                self.write_bytes(f"{name}.parquet", tables.write_table(name, list(rows.values())))

    def upgrade(self) -> list[str]:
        """Rewrite tables of an older format version in this one; returns the names rewritten."""
        done = []
        for name in TABLES:
            target = f"{name}.parquet"
            if self.fs.get_file_info(self.join(target)).type != pafs.FileType.File:
                continue
            data = self.read_bytes(target)
            upgraded = tables.upgrade_file(name, data)
            if upgraded is not data:
                self.write_bytes(target, upgraded)
                done.append(name)
        return done
