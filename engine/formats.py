"""Typed Parquet tables: one definition per on-disk table, one writer, one reader.

A :class:`TableFormat` names a table, its row dataclass (whose annotated fields are the fixed
columns and their pyarrow types), its key, which open columns it admits (names by prefix, for
metrics whose names the data decides) and its format version. :func:`write` checks every column
against the definition, casts the fixed ones, JSON-encodes lists and dicts in open columns and
stores the table name and version in the Parquet schema's metadata; :func:`read` refuses a file
of another table or version with the fix, and returns every fixed column (null where the writer
had no value).

The definitions live next to what they describe: the results store's tables in
:mod:`cytotune.engine.search.tables`, the explain job's index and map tables in
:mod:`cytotune.explainers.job.layout`. Tables of binary columns and many rows (the maps) go
through :func:`conform`, which checks and casts whole Arrow columns.
"""

from __future__ import annotations

import dataclasses
import io
import json
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

TABLE_KEY, VERSION_KEY = b"cytotune.table", b"cytotune.version"
_TYPES = {
    "str": pa.string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
    "bytes": pa.binary(),
    "list[str]": pa.list_(pa.string()),
    "list[int]": pa.list_(pa.int64()),
}


class FormatError(ValueError):
    """A table that does not follow its format (or was written by another format version)."""


@dataclass(frozen=True)
class TableFormat:
    """The definition of one table.

    Attributes:
        name: the table's name (stored in the file's metadata).
        row: the row dataclass; its fields (but ``extra``) are the fixed columns.
        key: the columns that identify a row.
        prefixes: open columns must start with one of these (None: any name; (): none).
        version: the format version this cytotune writes and reads.
        fix: what to do with a file from before this version (said in the error).
        choices: allowed values of some fixed columns.
    """

    name: str
    row: type
    key: tuple[str, ...] = ()
    prefixes: tuple[str, ...] | None = ()
    version: int = 1
    fix: str = "write it again with this cytotune"
    choices: dict[str, tuple] = field(default_factory=dict)

    @property
    def fields(self) -> dict[str, pa.DataType]:
        """Fixed column -> pyarrow type, from the row dataclass's annotations (a field's
        ``metadata={"column": ...}`` names a column that is no Python name, such as ``class``;
        ``metadata={"arrow": pa.float32()}`` stores it narrower than the annotation's type)."""
        return {
            column_of(f): f.metadata.get("arrow") or _TYPES[str(f.type).split(" | ")[0]]
            for f in dataclasses.fields(self.row)
            if f.name != "extra"
        }

    @property
    def metadata(self) -> dict[bytes, bytes]:
        return {TABLE_KEY: self.name.encode(), VERSION_KEY: str(self.version).encode()}

    @property
    def schema(self) -> pa.Schema:
        """The fixed columns' schema with the format's metadata (open columns are added)."""
        return pa.schema(list(self.fields.items()), metadata=self.metadata)

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
        opens = (
            f"; open columns start with {' or '.join(map(repr, self.prefixes))}"
            if self.prefixes
            else ""
        )
        raise FormatError(
            f"column {column!r} is not part of the {self.name} table (format version "
            f"{self.version}): fixed columns are {', '.join(self.fields)}{opens}. Add it to "
            f"{self.row.__name__} in {self.row.__module__}"
        )

    def check_values(self, column: str, values) -> None:
        allowed = self.choices.get(column)
        bad = {v for v in values if not missing(v)} - set(allowed) if allowed else set()
        if bad:
            raise FormatError(f"{self.name} {column} {sorted(bad)} is not one of {allowed}")

    def to_row(self, record: dict):
        """A table record (a dict, NaN for missing values) as the typed row."""
        fixed = self.fields
        names = {column_of(f): f.name for f in dataclasses.fields(self.row)}
        values = {k: (None if missing(v) else v) for k, v in record.items()}
        kwargs = {names[k]: _cast(values.get(k), t, k) for k, t in fixed.items() if k in values}
        extra = {k: v for k, v in values.items() if k not in fixed}
        if any(f.name == "extra" for f in dataclasses.fields(self.row)):
            return self.row(**kwargs, extra=extra)
        return self.row(**kwargs)


def column_of(f: dataclasses.Field) -> str:
    return f.metadata.get("column", f.name)


# -- writer ------------------------------------------------------------------------------------
def to_arrow(fmt: TableFormat, records: list[dict]) -> pa.Table:
    """Records as an Arrow table of ``fmt`` (fixed columns first, then the open ones)."""
    columns: dict[str, None] = dict.fromkeys(fmt.fields)
    for record in records:
        fmt.key_of(record)
        columns.update(dict.fromkeys(record))
    arrays, fields = [], []
    for column in columns:
        fmt.check_column(column)
        values = [r.get(column) for r in records]
        fmt.check_values(column, values)
        kind = fmt.fields.get(column)
        if kind is None:
            kind, values = _open_type(values)
        else:
            values = [_cast(v, kind, column) for v in values]
        arrays.append(pa.array(values, type=kind))
        fields.append(pa.field(column, kind))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=fmt.metadata))


def frame_to_arrow(fmt: TableFormat, frame: pd.DataFrame) -> pa.Table:
    """A whole DataFrame as Arrow, column by column: the checks of :func:`to_arrow` without a
    Python loop over rows where the columns are numbers (large tables)."""
    missing_key = [k for k in fmt.key if k not in frame]
    if missing_key:
        raise FormatError(f"a {fmt.name} table needs its key {fmt.key}; {missing_key} missing")
    arrays, fields = [], []
    for column in [*fmt.fields, *(c for c in frame.columns if c not in fmt.fields)]:
        fmt.check_column(column)
        kind = fmt.fields.get(column)
        if column not in frame:
            array = pa.nulls(len(frame), kind)
        elif kind is None and frame[column].dtype.kind in "biuf":
            kind = pa.bool_() if frame[column].dtype.kind == "b" else pa.float64()
            array = pa.array(frame[column], from_pandas=True).cast(kind)
        elif kind is None:
            kind, values = _open_type(frame[column].tolist())
            array = pa.array(values, type=kind)
        elif frame[column].dtype.kind in "biufb" and kind != pa.string():
            try:
                array = pa.array(frame[column], from_pandas=True).cast(kind)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise FormatError(f"column {column!r}: {exc}") from None
        else:
            fmt.check_values(column, frame[column].tolist())
            array = pa.array([_cast(v, kind, column) for v in frame[column].tolist()], type=kind)
        arrays.append(array)
        fields.append(pa.field(column, kind))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=fmt.metadata))


def conform(fmt: TableFormat, table: pa.Table) -> pa.Table:
    """An Arrow table as ``fmt``'s, without a Python loop over rows (large tables of binary
    columns): every column checked, the fixed ones first and cast to their types (absent ones
    null), open ones kept as they are, the format's name and version in the metadata."""
    missing_key = [k for k in fmt.key if k not in table.column_names]
    if missing_key:
        raise FormatError(f"a {fmt.name} table needs its key {fmt.key}; {missing_key} missing")
    fixed = fmt.fields
    arrays, fields = [], []
    for column in [*fixed, *(c for c in table.column_names if c not in fixed)]:
        fmt.check_column(column)
        kind = fixed.get(column)
        if column not in table.column_names:
            array = pa.nulls(len(table), kind)
        else:
            array = table.column(column)
            if column in fmt.choices:
                fmt.check_values(column, array.to_pylist())
            if kind is not None and array.type != kind:
                try:
                    array = array.cast(kind)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise FormatError(f"{fmt.name} column {column!r}: {exc}") from None
            kind = array.type
        arrays.append(array)
        fields.append(pa.field(column, kind))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=fmt.metadata))


def write(fmt: TableFormat, rows: list[dict] | pd.DataFrame) -> bytes:
    """Parquet bytes of a table of ``fmt`` from records or a DataFrame (write them atomically)."""
    table = frame_to_arrow(fmt, rows) if isinstance(rows, pd.DataFrame) else to_arrow(fmt, rows)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


# -- reader ------------------------------------------------------------------------------------
def check_version(fmt: TableFormat, schema: pa.Schema, where: str) -> None:
    """Raise FormatError unless ``schema`` is ``fmt``'s table in ``fmt``'s version."""
    meta = schema.metadata or {}
    table = meta.get(TABLE_KEY, b"").decode()
    version = meta.get(VERSION_KEY, b"").decode()
    if table == fmt.name and version == str(fmt.version):
        return
    if not version:
        raise FormatError(f"{where} was written before cytotune's table format versions; {fmt.fix}")
    if table != fmt.name:
        raise FormatError(f"{where} holds the {table!r} table, not {fmt.name!r}")
    if int(version) < fmt.version:
        raise FormatError(
            f"{where} is {fmt.name} format version {version}, this cytotune reads version "
            f"{fmt.version}; {fmt.fix}"
        )
    raise FormatError(
        f"{where} is {fmt.name} format version {version}, newer than this cytotune reads "
        f"({fmt.version}); install the cytotune that wrote it (pip install -U cytotune)"
    )


def read(fmt: TableFormat, source, where: str = "") -> pd.DataFrame:
    """A table of ``fmt`` from a Parquet file (path or open file) as a DataFrame, every fixed
    column present (null where the writer had no value), open columns after them."""
    table = pq.read_table(source)
    check_version(fmt, table.schema, where or f"{fmt.name}.parquet")
    for column, kind in fmt.fields.items():
        if column not in table.column_names:
            table = table.append_column(pa.field(column, kind), pa.nulls(len(table), kind))
    return table.to_pandas()


def empty(fmt: TableFormat) -> pd.DataFrame:
    """A table of ``fmt`` with no rows (the fixed columns, typed)."""
    return fmt.schema.empty_table().to_pandas()


def upgrade(fmt: TableFormat, data: bytes) -> bytes:
    """A table written before format versions (the same columns, no metadata) rewritten in this
    version; ``data`` itself when it is current already."""
    table = pq.read_table(io.BytesIO(data))
    meta = table.schema.metadata or {}
    if meta.get(VERSION_KEY, b"").decode() == str(fmt.version):
        return data
    if VERSION_KEY in meta:
        check_version(fmt, table.schema, f"{fmt.name}.parquet")
    records = [
        {k: v for k, v in r.items() if not missing(v)} for r in table.to_pandas().to_dict("records")
    ]
    return write(fmt, records)


# -- values ------------------------------------------------------------------------------------
def missing(value) -> bool:
    """None, NaN, NA and NaT (a list or an array is a value)."""
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _cast(value, kind: pa.DataType, column: str = ""):
    if missing(value):
        return None
    try:
        if pa.types.is_integer(kind):
            return _whole(value)
        if pa.types.is_floating(kind):
            return float(value)
        if kind == pa.bool_():
            return bool(value)
        if pa.types.is_binary(kind):
            return bytes(value)
        if pa.types.is_list(kind):
            items = value.tolist() if hasattr(value, "tolist") else value
            item = _whole if pa.types.is_integer(kind.value_type) else str
            return [item(v) for v in items]
    except (TypeError, ValueError) as exc:
        raise FormatError(f"column {column!r}: {exc}") from None
    return _text(value)


def _whole(value) -> int:
    number = float(value)
    if not number.is_integer():
        raise ValueError(f"{value!r} is not a whole number")
    return int(number)


def _open_type(values: list) -> tuple[pa.DataType, list]:
    """An open column's type from its values: bool, float64, or text (lists/dicts as JSON)."""
    values = [None if missing(v) else _native(v) for v in values]
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
