"""Server-side sorting, filtering and paging of the leaderboard (Dash DataTable's query syntax).

The browser only ever receives one page of rows, so a study of 10,000 trials costs one pandas
sort and a slice per interaction.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

# DataTable filter parts: "{col} op value", joined by " && ". Ops may carry an s/i prefix
# (case-sensitive / insensitive) and come as symbols or words.
_PART = re.compile(
    r"^\s*\{(?P<col>[^}]+)\}\s+(?P<op>[si]?(?:contains|datestartswith|>=|<=|!=|=|<|>|eq|ne|lt|le|gt|ge|is blank|is nil))\s*(?P<value>.*?)\s*$"
)
_WORDS = {"eq": "=", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}


def parse_filter(query: str | None) -> list[tuple[str, str, object]]:
    """``"{family} icontains res && {auc_macro} > 0.9"`` -> [(col, op, value), ...]."""
    parts = []
    for text in (query or "").split(" && "):
        if not text.strip():
            continue
        match = _PART.match(text)
        if not match:
            raise ValueError(
                f"cannot read the filter {text!r}; write e.g. > 0.9, = resnet, contains cnn"
            )
        op = match["op"]
        insensitive = not op.startswith("s")
        op = op[1:] if op[:1] in ("s", "i") and op[1:] else op
        op = _WORDS.get(op, op)
        value: object = match["value"]
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"`":
            value = value[1:-1]
        else:
            try:
                value = float(value)
            except ValueError:
                pass
        parts.append((match["col"], ("i" if insensitive else "") + op, value))
    return parts


def apply_filter(frame: pd.DataFrame, parts, columns: dict[str, str]) -> pd.DataFrame:
    """Rows of ``frame`` matching every part; ``columns`` maps table column ids to frame columns."""
    mask = np.ones(len(frame), dtype=bool)
    for col, op, value in parts:
        source = columns.get(col)
        if source is None or source not in frame:
            raise ValueError(f"cannot filter on unknown column {col!r}")
        series = frame[source]
        bare = op.lstrip("i")
        if bare in ("contains", "datestartswith", "=") and not isinstance(value, float):
            text = series.astype(str)
            needle = str(value)
            if op.startswith("i"):
                text, needle = text.str.lower(), needle.lower()
            if bare == "contains":
                mask &= text.str.contains(needle, regex=False).to_numpy()
            elif bare == "datestartswith":
                mask &= text.str.startswith(needle).to_numpy()
            else:
                mask &= (text == needle).to_numpy()
            continue
        if bare in ("is blank", "is nil"):
            mask &= series.isna().to_numpy()
            continue
        numbers = pd.to_numeric(series, errors="coerce")
        if not isinstance(value, float):
            raise ValueError(f"{col} {bare} needs a number, got {value!r}")
        if bare == "contains":
            mask &= (
                series.astype(str)
                .str.contains(repr(value).rstrip("0").rstrip("."), regex=False)
                .to_numpy()
            )
            continue
        compare = {
            "=": numbers == value,
            "!=": numbers != value,
            "<": numbers < value,
            "<=": numbers <= value,
            ">": numbers > value,
            ">=": numbers >= value,
        }[bare]
        mask &= compare.fillna(False).to_numpy(dtype=bool)
    return frame[mask]


def apply_sort(frame: pd.DataFrame, sort_by, columns: dict[str, str], default: tuple[str, bool]):
    """Sort by DataTable's ``sort_by`` ([{column_id, direction}]), missing values last."""
    keys, ascending = [], []
    for item in sort_by or []:
        source = columns.get(item.get("column_id"))
        if source in frame:
            keys.append(source)
            ascending.append(item.get("direction") == "asc")
    if not keys:
        keys, ascending = [default[0]], [default[1]]
    if keys[0] not in frame:
        return frame
    return frame.sort_values(keys, ascending=ascending, na_position="last", kind="stable")


def page(frame: pd.DataFrame, page_current: int, page_size: int) -> tuple[pd.DataFrame, int]:
    """One page and the page count (at least 1)."""
    pages = max(1, math.ceil(len(frame) / page_size))
    current = min(max(0, int(page_current or 0)), pages - 1)
    return frame.iloc[current * page_size : (current + 1) * page_size], pages


def mean_std(mean, std, digits: int = 4) -> str:
    """``0.9123 ± 0.0131`` ("-" when the mean is missing)."""
    if mean is None or pd.isna(mean):
        return "-"
    if std is None or pd.isna(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"
