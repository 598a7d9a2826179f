"""The results store's tables: one typed definition each, one writer, one reader.

A study directory holds three Parquet tables (see :mod:`cytotune.engine.search.store`):

========  ==========================  ====================================================
table     key                         row
========  ==========================  ====================================================
trials    ``trial_id``                :class:`TrialRow` + ``val/<metric>``, ``val/<metric>_std``,
                                      ``time/<phase>_s``, ``param.<group>.<name>`` columns
folds     ``trial_id, fold``          :class:`FoldRow` + one column per metric of the fold
epochs    ``trial_id, epoch, fold``   :class:`EpochRow` + one column per metric (fold -1: the
                                      mean over the folds)
========  ==========================  ====================================================

The dataclass fields are the fixed columns (their annotations give the pyarrow types); the
open columns are scores whose names the metrics decide. :func:`write_table` is the only
writer: it checks every column against the definition, casts the fixed ones, JSON-encodes lists
and dicts, and stores the table name and :data:`VERSION` in the Parquet schema's metadata.
:func:`read_table` is the only reader: it refuses a file of another table or version with the
fix, and returns every fixed column (null where absent) whatever the writer knew.
"""

from __future__ import annotations

import dataclasses
import io
import json
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

VERSION = 1
TABLE_KEY, VERSION_KEY = b"cytotune.table", b"cytotune.version"
UPGRADE_HINT = "python -m cytotune.engine.search.tables upgrade STUDY_DIR"

# Trial statuses: running; completed (every fold and epoch); pruned (stopped early by ASHA or
# fold racing); stopped (the time budget ended it mid-run); failed.
STATUSES = ("running", "completed", "pruned", "stopped", "failed")
FINAL = ("completed", "pruned")  # recorded for good: a restored trial does not re-run them


class FormatError(ValueError):
    """A table that does not follow its format (or was written by another format version)."""


@dataclass
class TrialRow:
    """One row of trials.parquet: a configuration evaluated on the K folds."""

    trial_id: str
    number: int | None = None  # order of start (0, 1, ...): breaks ranking ties
    status: str | None = None  # one of STATUSES
    family: str | None = None
    params: str | None = None  # the nested search sample as JSON (see :func:`sample_of`)
    started_at: float | None = None
    ended_at: float | None = None
    epochs_done: int | None = None
    folds_done: int | None = None
    train_loss: float | None = None
    images_per_s: float | None = None
    node_id: str | None = None  # the Ray node of the last report
    nodes: str | None = None  # every node it ran on, comma-separated, in order
    checkpoint: str | None = None  # the directory holding fold_0 ... fold_{K-1}
    retries: int | None = None
    last_error: str | None = None  # the error of the last retry
    error: str | None = None  # why a failed trial failed
    extra: dict[str, Any] = field(default_factory=dict)  # val/*, time/*, param.* columns

    @property
    def sample(self) -> dict:
        return sample_of(self.params)

    def metric(self, name: str) -> float | None:
        """The fold mean of ``name`` (``val/<name>``), None when not reported."""
        value = self.extra.get(f"val/{name}")
        return None if _missing(value) else float(value)


@dataclass
class FoldRow:
    """One row of folds.parquet: a trial's final metrics on one fold (its metrics.json)."""

    trial_id: str
    fold: int
    epoch: int | None = None
    n_val: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # metrics; curves and matrices as JSON


@dataclass
class EpochRow:
    """One point of a learning curve: a trial, an epoch and a fold (-1: the fold mean)."""

    trial_id: str
    epoch: int
    fold: int
    train_loss: float | None = None
    val_loss: float | None = None
    images_per_s: float | None = None
    epoch_seconds: float | None = None
    n_folds: int | None = None  # fold -1 of race: folds: how many folds the mean is over
    extra: dict[str, Any] = field(default_factory=dict)  # the metrics


_TYPES = {"str": pa.string(), "int": pa.int64(), "float": pa.float64()}


@dataclass(frozen=True)
class TableFormat:
    """The definition of one table: its row class, key and which open columns it admits."""

    name: str
    row: type
    key: tuple[str, ...]
    prefixes: tuple[str, ...] | None  # open columns must start with one (None: any name)

    @property
    def fields(self) -> dict[str, pa.DataType]:
        """Fixed column -> pyarrow type, from the row dataclass's annotations."""
        out = {}
        for f in dataclasses.fields(self.row):
            if f.name != "extra":
                out[f.name] = _TYPES[str(f.type).split(" | ")[0]]
        return out

    @property
    def schema(self) -> pa.Schema:
        """The fixed columns' schema with the format's metadata (open columns are added)."""
        return pa.schema(list(self.fields.items()), metadata=self.metadata)

    @property
    def metadata(self) -> dict[bytes, bytes]:
        return {TABLE_KEY: self.name.encode(), VERSION_KEY: str(VERSION).encode()}

    def key_of(self, row: dict) -> tuple:
        try:
            return tuple(row[k] for k in self.key)
        except KeyError as exc:
            raise FormatError(
                f"a {self.name} row needs its key {self.key}; {exc.args[0]!r} is missing"
            ) from None

    def check_column(self, column: str) -> None:
        if column in self.fields or self.prefixes is None or column.startswith(self.prefixes):
            return
        raise FormatError(
            f"column {column!r} is not part of the {self.name} table (format version {VERSION}): "
            f"fixed columns are {', '.join(self.fields)}; open columns start with "
            f"{' or '.join(map(repr, self.prefixes))}. Add it to {self.row.__name__} in "
            f"{__name__}"
        )

    def to_row(self, record: dict):
        """A table record (a dict, NaN for missing values) as the typed row."""
        fixed = self.fields
        values = {k: (None if _missing(v) else v) for k, v in record.items()}
        kwargs = {k: _cast(values.get(k), t) for k, t in fixed.items() if k in values}
        extra = {k: v for k, v in values.items() if k not in fixed}
        return self.row(**kwargs, extra=extra)

    def to_record(self, row) -> dict:
        """A typed row as a record for :meth:`StudyStore.upsert` (None fields left out)."""
        data = dataclasses.asdict(row)
        extra = data.pop("extra")
        return {**{k: v for k, v in data.items() if v is not None}, **extra}


TRIALS = TableFormat("trials", TrialRow, ("trial_id",), ("val/", "time/", "param."))
FOLDS = TableFormat("folds", FoldRow, ("trial_id", "fold"), None)
EPOCHS = TableFormat("epochs", EpochRow, ("trial_id", "epoch", "fold"), None)
FORMATS = {f.name: f for f in (TRIALS, FOLDS, EPOCHS)}


def format_of(name: str) -> TableFormat:
    if name not in FORMATS:
        raise ValueError(f"table {name!r} is not one of {tuple(FORMATS)}")
    return FORMATS[name]


# -- writer ------------------------------------------------------------------------------------
def to_arrow(name: str, records: list[dict]) -> pa.Table:
    """Records of table ``name`` as an Arrow table of its format (fixed columns first)."""
    fmt = format_of(name)
    columns: dict[str, None] = dict.fromkeys(fmt.fields)
    for record in records:
        fmt.key_of(record)
        columns.update(dict.fromkeys(record))
    arrays, fields = [], []
    for column in columns:
        fmt.check_column(column)
        values = [r.get(column) for r in records]
        kind = fmt.fields.get(column)
        if kind is None:
            kind, values = _open_type(values)
        else:
            values = [_cast(v, kind, column) for v in values]
        arrays.append(pa.array(values, type=kind))
        fields.append(pa.field(column, kind))
    if fmt is TRIALS:
        bad = {v for v in (r.get("status") for r in records) if not _missing(v)} - set(STATUSES)
        if bad:
            raise FormatError(f"trial status {sorted(bad)} is not one of {STATUSES}")
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=fmt.metadata))


def frame_to_arrow(name: str, frame: pd.DataFrame) -> pa.Table:
    """A whole DataFrame of table ``name`` as Arrow, column by column (for large synthetic
    studies: the same checks as :func:`to_arrow` without a Python loop over rows)."""
    fmt = format_of(name)
    missing = [k for k in fmt.key if k not in frame]
    if missing:
        raise FormatError(f"a {name} table needs its key {fmt.key}; {missing} missing")
    arrays, fields = [], []
    for column in [*fmt.fields, *(c for c in frame.columns if c not in fmt.fields)]:
        fmt.check_column(column)
        kind = fmt.fields.get(column)
        if column not in frame:
            array = pa.nulls(len(frame), kind)
        elif kind is None and frame[column].dtype.kind in "biuf":  # numbers: no row loop
            kind = pa.bool_() if frame[column].dtype.kind == "b" else pa.float64()
            array = pa.array(frame[column], from_pandas=True).cast(kind)
        elif kind is None:
            kind, values = _open_type(frame[column].tolist())
            array = pa.array(values, type=kind)
        else:
            try:
                array = pa.array(frame[column], from_pandas=True).cast(kind)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise FormatError(f"column {column!r}: {exc}") from None
        arrays.append(array)
        fields.append(pa.field(column, kind))
    if fmt is TRIALS:
        bad = set(frame["status"].dropna()) - set(STATUSES) if "status" in frame else set()
        if bad:
            raise FormatError(f"trial status {sorted(bad)} is not one of {STATUSES}")
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=fmt.metadata))


def write_table(name: str, rows: list[dict] | pd.DataFrame) -> bytes:
    """Parquet bytes of table ``name`` from records or a DataFrame (the store writes them
    atomically)."""
    table = frame_to_arrow(name, rows) if isinstance(rows, pd.DataFrame) else to_arrow(name, rows)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


# -- reader ------------------------------------------------------------------------------------
def check_version(name: str, schema: pa.Schema, where: str) -> None:
    """Raise FormatError unless ``schema`` is table ``name`` in this format version."""
    meta = schema.metadata or {}
    table = meta.get(TABLE_KEY, b"").decode()
    version = meta.get(VERSION_KEY, b"").decode()
    if table == name and version == str(VERSION):
        return
    if not version:
        raise FormatError(
            f"{where} was written before the results store had format versions; "
            f"upgrade the study once with `{UPGRADE_HINT}`"
        )
    if table != name:
        raise FormatError(f"{where} holds the {table!r} table, not {name!r}")
    if int(version) < VERSION:
        raise FormatError(
            f"{where} is {name} format version {version}, this cytotune reads version "
            f"{VERSION}; upgrade the study with `{UPGRADE_HINT}`"
        )
    raise FormatError(
        f"{where} is {name} format version {version}, newer than this cytotune reads "
        f"({VERSION}); install the cytotune that wrote it (pip install -U cytotune)"
    )


def read_table(name: str, source, where: str = "") -> pd.DataFrame:
    """Table ``name`` from a Parquet file (path or open file) as a DataFrame; every fixed column
    is present (null where the writer had no value), open columns follow."""
    fmt = format_of(name)
    table = pq.read_table(source)
    check_version(name, table.schema, where or f"{name}.parquet")
    for column, kind in fmt.fields.items():
        if column not in table.column_names:
            table = table.append_column(pa.field(column, kind), pa.nulls(len(table), kind))
    return table.to_pandas()


def empty_frame(name: str) -> pd.DataFrame:
    """Table ``name`` with no rows (the fixed columns, typed)."""
    return format_of(name).schema.empty_table().to_pandas()


def upgrade_file(name: str, data: bytes) -> bytes:
    """A table written before format versions (version 0: the same columns, no metadata),
    rewritten in this version."""
    table = pq.read_table(io.BytesIO(data))
    meta = table.schema.metadata or {}
    if meta.get(VERSION_KEY, b"").decode() == str(VERSION):
        return data
    if VERSION_KEY in meta:
        check_version(name, table.schema, f"{name}.parquet")
    records = [
        {k: v for k, v in r.items() if not _missing(v)}
        for r in table.to_pandas().to_dict("records")
    ]
    return write_table(name, records)


# -- parameters --------------------------------------------------------------------------------
def sample_of(params) -> dict:
    """The nested search sample of a ``params`` cell (JSON text or a dict; {} when unreadable)."""
    if isinstance(params, dict):
        return params
    try:
        sample = json.loads(params) if isinstance(params, str) else {}
    except ValueError:
        return {}
    return sample if isinstance(sample, dict) else {}


def param_columns(sample: dict) -> dict[str, Any]:
    """``{"family": f, f: {...}, "train": {...}}`` -> ``{"param.f.key": v, "param.train.key":
    v}`` (lists and dicts as JSON), the searchable columns of trials.parquet."""
    out = {}
    for group, values in sample.items():
        if isinstance(values, dict):
            for key, value in values.items():
                out[f"param.{group}.{key}"] = (
                    json.dumps(value) if isinstance(value, (list, dict)) else value
                )
    return out


def key_params(params, limit: int = 4) -> str:
    """A short summary of a trial's parameters (``"resnet18 dropout=0.2 lr=3.0e-03"``): the
    family's first values and the learning rate. ``params``: the sample or its JSON."""
    sample = sample_of(params)
    family = sample.get("family", "?")
    values = sample.get(family) if isinstance(sample.get(family), dict) else {}
    parts = [
        str(v) if k == "backbone" else f"{k}={_short(v)}"
        for k, v in values.items()
        if not isinstance(v, dict)
    ][: limit - 1]
    lr = (sample.get("train") or {}).get("lr")
    if isinstance(lr, (int, float)) and not isinstance(lr, bool):
        parts.append(f"lr={lr:.1e}")
    return " ".join(parts)


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return "x".join(map(str, value)) or "-"
    return str(value)


# -- values ------------------------------------------------------------------------------------
def _missing(value) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # arrays and lists: a value
        return False


def _cast(value, kind: pa.DataType, column: str = ""):
    if _missing(value):
        return None
    try:
        if kind == pa.int64():
            number = float(value)
            if not number.is_integer():
                raise ValueError(f"{value!r} is not a whole number")
            return int(number)
        if kind == pa.float64():
            return float(value)
    except (TypeError, ValueError) as exc:
        raise FormatError(f"column {column!r}: {exc}") from None
    return _text(value)


def _open_type(values: list) -> tuple[pa.DataType, list]:
    """An open column's type from its values: bool, float64, or text (lists/dicts as JSON)."""
    values = [None if _missing(v) else _native(v) for v in values]
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.bool_(), values
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.float64(), [None if v is None else float(v) for v in values]
    return pa.string(), [None if v is None else _text(v) for v in values]


def _native(value):
    """numpy scalars as Python values (arrays stay arrays)."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    return value


def _text(value) -> str:
    if isinstance(value, str):
        return value
    if hasattr(value, "tolist"):
        value = value.tolist()
    return json.dumps(value, default=float)


def main(argv: list[str] | None = None) -> int:
    """``python -m cytotune.engine.search.tables upgrade STUDY_DIR ...``"""
    import argparse

    from .store import StudyStore

    parser = argparse.ArgumentParser(prog="python -m cytotune.engine.search.tables")
    parser.add_argument("command", choices=["upgrade"])
    parser.add_argument("studies", nargs="+", help="study directories (or URIs)")
    args = parser.parse_args(argv)
    for uri in args.studies:
        for name in StudyStore(uri).upgrade():
            print(f"{uri}: {name}.parquet upgraded to format version {VERSION}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
