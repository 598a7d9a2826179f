"""The results store's tables: one typed definition each, read and written only by
:class:`~cytotune.engine.search.store.StudyStore`.

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
open columns are scores whose names the metrics decide. Writing and reading, with the format
version kept in each file, is :mod:`cytotune.engine.formats`; this module adds the tables'
definitions, the search parameters' columns and summary, the decoder of the folds table's
JSON-valued cells (:func:`decode_cell`: confusion matrices and ROC curves), and the upgrade of
older studies' tables (``cytotune upgrade STUDY_DIR``, :mod:`cytotune.engine.upgrade_command`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from cytotune.engine import formats
from cytotune.engine.formats import FormatError, TableFormat

__all__ = [
    "FormatError", "TrialRow", "FoldRow", "EpochRow", "TRIALS", "FOLDS", "EPOCHS",
    "decode_cell", "confusion_matrix_of", "roc_of",
]  # fmt: skip

VERSION = 1
UPGRADE_HINT = "cytotune upgrade STUDY_DIR"
_FIX = f"upgrade the study once with `{UPGRADE_HINT}`"

# Trial statuses: running; completed (every fold and epoch); pruned (stopped early by ASHA or
# fold racing); stopped (the time budget ended it mid-run); failed.
STATUSES = ("running", "completed", "pruned", "stopped", "failed")
FINAL = ("completed", "pruned")  # recorded for good: a restored trial does not re-run them


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
        return None if formats.missing(value) else float(value)


@dataclass
class FoldRow:
    """One row of folds.parquet: a trial's final metrics on one fold (its metrics.json)."""

    trial_id: str
    fold: int
    epoch: int | None = None
    n_val: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # metrics; curves and matrices as JSON
    # (decoded by decode_cell)


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


TRIALS = TableFormat(
    "trials", TrialRow, ("trial_id",), ("val/", "time/", "param."), VERSION, _FIX,
    {"status": STATUSES},
)  # fmt: skip
FOLDS = TableFormat("folds", FoldRow, ("trial_id", "fold"), None, VERSION, _FIX)
EPOCHS = TableFormat("epochs", EpochRow, ("trial_id", "epoch", "fold"), None, VERSION, _FIX)
FORMATS = {f.name: f for f in (TRIALS, FOLDS, EPOCHS)}


def format_of(name: str) -> TableFormat:
    if name not in FORMATS:
        raise ValueError(f"table {name!r} is not one of {tuple(FORMATS)}")
    return FORMATS[name]


def write_table(name: str, rows: list[dict] | pd.DataFrame) -> bytes:
    """Parquet bytes of table ``name`` from records or a DataFrame (the store writes them
    atomically)."""
    return formats.write(format_of(name), rows)


def read_table(name: str, source, where: str = "") -> pd.DataFrame:
    """Table ``name`` from a Parquet file (path or open file); every fixed column present."""
    return formats.read(format_of(name), source, where)


def empty_frame(name: str) -> pd.DataFrame:
    return formats.empty(format_of(name))


def upgrade_file(name: str, data: bytes) -> bytes:
    """A table from before format versions rewritten in this one (``data`` when current)."""
    return formats.upgrade(format_of(name), data)


# -- JSON-valued cells ------------------------------------------------------------------------
# folds.parquet keeps a fold's confusion matrix and ROC curves (classification_metrics with
# detail, see cytotune.engine.metrics) as JSON text; their well-level versions carry "well/".
_CELL_FIX = (
    "the study recorder writes it from a fold's metrics.json (classification_metrics); "
    "re-record the trial or drop its rows from folds.parquet"
)


def _malformed(table: str, column: str, expected: str, value) -> ValueError:
    text = repr(value)
    text = text if len(text) <= 80 else text[:77] + "..."
    return ValueError(f"{table} column {column!r}: expected {expected}, got {text}; {_CELL_FIX}")


def _json(value, table: str, column: str, expected: str):
    """The decoded cell (``value`` itself when not text); None when missing."""
    if isinstance(value, (str, bytes)):
        try:
            return json.loads(value)
        except ValueError:
            raise _malformed(table, column, expected, value) from None
    return None if formats.missing(value) else value


def confusion_matrix_of(value, column: str = "confusion_matrix") -> np.ndarray | None:
    """A fold's confusion matrix cell (JSON text or decoded) as a (K, K) int64 array, rows true
    and columns predicted; None when missing.

    Raises:
        ValueError: not a square matrix of non-negative whole counts (names ``column``).
    """
    expected = "a K x K matrix of non-negative whole counts such as [[5, 1], [0, 4]]"
    decoded = _json(value, "folds", column, expected)
    if decoded is None:
        return None
    try:
        matrix = np.asarray(decoded, dtype=np.float64)  # (K, K)
    except (TypeError, ValueError):
        raise _malformed("folds", column, expected, value) from None
    square = matrix.ndim == 2 and matrix.shape[0] == matrix.shape[1] and matrix.size > 0
    if not square or not np.all(np.isfinite(matrix)) or np.any(matrix < 0):
        raise _malformed("folds", column, expected, value)
    if np.any(matrix != np.round(matrix)):
        raise _malformed("folds", column, expected, value)
    return matrix.astype(np.int64)


def roc_of(value, column: str = "roc") -> dict[str, dict] | None:
    """A fold's ROC curves cell (JSON text or decoded): class name -> ``{"fpr": [...], "tpr":
    [...], "auc": float}`` in the order written (``auc`` NaN when absent); None when missing.

    Raises:
        ValueError: not a mapping of class names to curves with equally long ``fpr`` and ``tpr``
            lists of numbers (names ``column``).
    """
    expected = 'class name -> {"fpr": [...], "tpr": [...], "auc": x} with equally long lists'
    decoded = _json(value, "folds", column, expected)
    if decoded is None:
        return None
    if not isinstance(decoded, dict):
        raise _malformed("folds", column, expected, value)
    curves = {}
    for name, curve in decoded.items():
        try:
            fpr = [float(x) for x in curve["fpr"]]
            tpr = [float(x) for x in curve["tpr"]]
            auc = float(curve.get("auc", float("nan")))
        except (TypeError, ValueError, KeyError, AttributeError):
            raise _malformed("folds", column, expected, value) from None
        if len(fpr) != len(tpr):
            raise _malformed("folds", column, expected, value)
        curves[str(name)] = {"fpr": fpr, "tpr": tpr, "auc": auc}
    return curves


_CELLS = {("folds", "confusion_matrix"): confusion_matrix_of, ("folds", "roc"): roc_of}
_GROUP_PREFIXES = ("well/",)


def decode_cell(table: str, column: str, value):
    """A JSON-valued cell of a results table, decoded and checked: folds ``confusion_matrix``
    (:func:`confusion_matrix_of`) and ``roc`` (:func:`roc_of`), also with a ``well/`` prefix.

    Args:
        table: ``"folds"`` (see :data:`FORMATS`).
        column: the column the cell comes from.
        value: the cell as read (JSON text) or already decoded; None/NaN for missing.

    Raises:
        ValueError: an unknown table or a column that holds no JSON; a malformed value (the
            message names the column and the fix).
    """
    format_of(table)
    base = column
    for prefix in _GROUP_PREFIXES:
        base = base.removeprefix(prefix)
    decode = _CELLS.get((table, base))
    if decode is None:
        known = sorted(c for t, c in _CELLS if t == table)
        raise ValueError(
            f"{table} column {column!r} holds no JSON to decode; decodable columns: {known} "
            f"(optionally prefixed {_GROUP_PREFIXES})"
        )
    return decode(value, column)


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


def main(argv: list[str] | None = None) -> int:
    """``python -m cytotune.engine.search.tables upgrade STUDY_DIR ...``: the older spelling of
    ``cytotune upgrade STUDY_DIR`` (kept for scripts that use it)."""
    import argparse

    from cytotune.engine.cli import main as cli_main

    parser = argparse.ArgumentParser(prog="python -m cytotune.engine.search.tables")
    parser.add_argument("command", choices=["upgrade"])
    parser.add_argument("studies", nargs="+", help="study directories (or URIs)")
    args = parser.parse_args(argv)
    return max(cli_main(["upgrade", uri]) for uri in args.studies)


if __name__ == "__main__":
    raise SystemExit(main())
