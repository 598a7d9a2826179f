"""Ingest sources: turn a user's folder / index table / npz bundle into crop records.

A record names one crop and where its pixels come from (a file path, or an array already in
memory for npz bundles), its label or regression targets, group columns and extra metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

PATH_COLUMNS = ("path", "image", "file", "filename")
MASK_COLUMNS = ("mask", "mask_path")


@dataclass
class CropRecord:
    """One crop to ingest. Exactly one of ``path`` / ``array`` is set."""

    cell_id: str
    source: str
    path: Path | None = None
    array: np.ndarray | None = None
    mask_path: Path | None = None
    mask: np.ndarray | None = None
    label: str | None = None
    targets: dict[str, float] = field(default_factory=dict)
    groups: dict[str, str] = field(default_factory=dict)


@dataclass
class SourceListing:
    """The records of a source plus what the source says about its columns."""

    records: list[CropRecord]
    group_columns: list[str]
    kind: str


def list_source(
    source: str | Path, *, targets: list[str] | None = None, groups: list[str] | None = None
) -> SourceListing:
    """Enumerate the crops of a source.

    Args:
        source: a folder of class sub-folders, a CSV/Parquet index (``path,label[,group,...]``,
            paths relative to the index file), or an ``.npz`` with ``images`` and ``labels``.
        targets: regression target columns (instead of ``label``).
        groups: group/metadata columns to keep (default: every extra column of the index).
    """
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"ingest source {source} does not exist")
    if source.is_dir():
        return _list_folder(source)
    suffix = source.suffix.lower()
    if suffix in (".csv", ".tsv", ".parquet", ".pq"):
        return _list_index(source, targets or [], groups)
    if suffix == ".npz":
        return _list_npz(source, targets or [], groups)
    raise ValueError(
        f"cannot ingest {source}: give a folder of class sub-folders, a .csv/.tsv/.parquet index "
        "with a path column, or an .npz with images and labels"
    )


def _list_folder(root: Path) -> SourceListing:
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise ValueError(
            f"{root} has no class sub-folders; expected {root}/<class name>/<crop files>"
        )
    records = []
    for class_dir in class_dirs:
        for path in sorted(class_dir.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                rel = path.relative_to(root)
                record = CropRecord(
                    cell_id=str(rel.with_suffix("")),
                    source=str(rel),
                    path=path,
                    label=class_dir.name,
                )
                records.append(record)  # unsupported file types are quarantined by ingest
    return SourceListing(records, [], "folder")


def _read_index(path: Path) -> pd.DataFrame:
    if path.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(path)
    return pd.read_csv(
        path, sep="\t" if path.suffix.lower() == ".tsv" else ",", dtype=str, keep_default_na=False
    )


def _list_index(index: Path, targets: list[str], groups: list[str] | None) -> SourceListing:
    table = _read_index(index)
    path_col = next((c for c in PATH_COLUMNS if c in table.columns), None)
    if path_col is None:
        raise ValueError(
            f"{index} has no path column; name one of {PATH_COLUMNS} (columns: {list(table.columns)})"
        )
    _check_columns(index, table.columns, targets, groups)
    if not targets and "label" not in table.columns:
        raise ValueError(
            f"{index} has no 'label' column; add one, or pass --targets for regression"
        )
    mask_col = next((c for c in MASK_COLUMNS if c in table.columns), None)
    used = {path_col, "label", "cell_id", mask_col, *targets}
    group_cols = list(groups) if groups is not None else [c for c in table.columns if c not in used]
    base = index.parent
    records = []
    for i, row in enumerate(table.to_dict("records")):
        rel = str(row[path_col])
        cell_id = str(row.get("cell_id") or "") or str(Path(rel).with_suffix(""))
        mask_rel = str(row.get(mask_col) or "") if mask_col else ""
        records.append(
            CropRecord(
                cell_id=cell_id,
                source=rel or f"row {i}",
                path=(base / rel) if rel else None,
                mask_path=(base / mask_rel) if mask_rel else None,
                label=None if targets else _text(row.get("label")),
                targets={t: _number(row.get(t)) for t in targets},
                groups={g: _text(row.get(g)) for g in group_cols},
            )
        )
    return SourceListing(records, group_cols, "index")


def _list_npz(path: Path, targets: list[str], groups: list[str] | None) -> SourceListing:
    with np.load(path, allow_pickle=False) as bundle:
        arrays = {k: bundle[k] for k in bundle.files}
    if "images" not in arrays:
        raise ValueError(
            f"{path} has no 'images' array (keys: {sorted(arrays)}); save it as np.savez(f, images=..., labels=...)"
        )
    images = arrays["images"]
    n = len(images)
    if not targets and "labels" not in arrays:
        raise ValueError(
            f"{path} has no 'labels' array (keys: {sorted(arrays)}); add labels or pass --targets"
        )
    _check_columns(path, arrays, targets, groups)
    per_row = {
        k: v
        for k, v in arrays.items()
        if k not in ("images", "labels", "masks", "cell_ids")
        and v.shape[:1] == (n,)
        and v.ndim == 1
    }
    group_cols = (
        list(groups) if groups is not None else [k for k in sorted(per_row) if k not in targets]
    )
    ids = arrays.get("cell_ids")
    masks = arrays.get("masks")
    records = []
    for i in range(n):
        records.append(
            CropRecord(
                cell_id=str(ids[i]) if ids is not None else f"{path.stem}/{i:06d}",
                source=f"{path.name}[{i}]",
                array=images[i],
                mask=None if masks is None else masks[i],
                label=None if targets else _text(arrays["labels"][i]),
                targets={t: _number(arrays[t][i]) for t in targets},
                groups={g: _text(arrays[g][i]) for g in group_cols},
            )
        )
    return SourceListing(records, group_cols, "npz")


def _check_columns(source: Path, columns, targets: list[str], groups: list[str] | None) -> None:
    missing = [c for c in [*targets, *(groups or [])] if c not in columns]
    if missing:
        raise ValueError(f"{source} has no column(s) {missing}; available: {sorted(columns)}")


def _text(value) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return str(value)


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")
