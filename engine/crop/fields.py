"""Fields of view to crop: listing a folder or an index table, and reading one field.

A folder holds field images directly (no label) or in class sub-folders (label = sub-folder).
An index (CSV/TSV/Parquet) has a ``path`` column (relative to the index) and optional ``label``,
``plate``, ``well``, ``field`` columns, plus ``truth`` (an instance label image of the field,
for training and scoring). A field without a label inherits the label of its well.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from cytotune.engine.data.readers import normalise_dtype, read_image, supported_extensions
from cytotune.engine.data.sources import PATH_COLUMNS

GROUP_COLUMNS = ("plate", "well", "field")
TRUTH_COLUMNS = ("truth", "labels", "instances")


@dataclass
class FieldRecord:
    """One field to crop; ``field_id`` is unique across the listing."""

    field_id: str
    path: Path
    label: str | None = None
    groups: dict[str, str] = field(default_factory=dict)
    truth_path: Path | None = None

    @property
    def source(self) -> str:
        return str(self.path)


def _images_in(folder: Path) -> list[Path]:
    exts = set(supported_extensions()) - {".npy"}
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in exts
    )


def _truth_for(truth_dir: Path | None, image: Path, rel: Path) -> Path | None:
    if truth_dir is None:
        return None
    for candidate in (truth_dir / rel, truth_dir / image.name):
        if candidate.is_file():
            return candidate
    matches = sorted(truth_dir.glob(f"{image.stem}.*"))
    return matches[0] if matches else None


def _list_folder(root: Path, truth_dir: Path | None) -> list[FieldRecord]:
    records = []
    for sub in [root] + sorted(p for p in root.iterdir() if p.is_dir() and p.name[0] != "."):
        label = None if sub == root else sub.name
        for path in _images_in(sub):
            rel = path.relative_to(root)
            field_id = str(rel.with_suffix(""))
            groups = {"field": field_id}
            records.append(
                FieldRecord(field_id, path, label, groups, _truth_for(truth_dir, path, rel))
            )
    if not records:
        raise ValueError(
            f"{root} holds no field images ({', '.join(supported_extensions())}), directly or "
            "in class sub-folders"
        )
    return records


def _text(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value).strip()


def _list_index(index: Path, truth_dir: Path | None) -> list[FieldRecord]:
    import pandas as pd

    if index.suffix.lower() in (".parquet", ".pq"):
        table = pd.read_parquet(index)
    else:
        sep = "\t" if index.suffix.lower() == ".tsv" else ","
        table = pd.read_csv(index, sep=sep, dtype=str, keep_default_na=False)
    path_col = next((c for c in PATH_COLUMNS if c in table.columns), None)
    if path_col is None:
        raise ValueError(
            f"{index} has no path column; name one of {PATH_COLUMNS} (columns: {list(table.columns)})"
        )
    truth_col = next((c for c in TRUTH_COLUMNS if c in table.columns), None)
    present = [c for c in GROUP_COLUMNS if c in table.columns and c != "field"]
    records = []
    for i, row in enumerate(table.to_dict("records")):
        rel = Path(_text(row[path_col]))
        if not str(rel) or str(rel) == ".":
            raise ValueError(f"{index}: row {i + 2} has an empty {path_col!r}")
        groups = {c: _text(row.get(c)) for c in present}
        groups["field"] = _text(row.get("field")) or str(rel.with_suffix(""))
        truth_rel = _text(row.get(truth_col)) if truth_col else ""
        truth = (index.parent / truth_rel) if truth_rel else None
        if truth is None:
            truth = _truth_for(truth_dir, index.parent / rel, rel)
        label = _text(row.get("label")) or None
        records.append(FieldRecord(groups["field"], index.parent / rel, label, groups, truth))
    names = [r.field_id for r in records]
    if len(set(names)) < len(names):  # field numbers repeat per well: qualify them
        for r in records:
            parts = [r.groups[c] for c in present if r.groups[c]]
            r.field_id = r.groups["field"] = "/".join([*parts, r.field_id])
    return records


def _inherit_well_labels(records: list[FieldRecord]) -> None:
    """Give a field without a label the (single) label of the other fields of its well."""
    by_well: dict[tuple[str, str], set[str]] = {}
    for r in records:
        if r.label and r.groups.get("well"):
            key = (r.groups.get("plate", ""), r.groups["well"])
            by_well.setdefault(key, set()).add(r.label)
    for r in records:
        key = (r.groups.get("plate", ""), r.groups.get("well", ""))
        if not r.label and len(by_well.get(key, ())) == 1:
            r.label = next(iter(by_well[key]))


def list_fields(source: str | Path, truth: str | Path | None = None) -> list[FieldRecord]:
    """Enumerate the fields of a folder or an index table.

    Args:
        source: folder of field images (optionally in class sub-folders) or a CSV/TSV/Parquet
            index with ``path`` and optional ``label, plate, well, field, truth`` columns.
        truth: folder of instance label images named like the fields (for training/scoring).

    Returns:
        The records, in listing order; field ids are unique.
    """
    source = Path(source)
    truth_dir = None if truth is None else Path(truth)
    if truth_dir is not None and not truth_dir.is_dir():
        raise FileNotFoundError(f"truth folder {truth_dir} does not exist")
    if not source.exists():
        raise FileNotFoundError(f"fields source {source} does not exist")
    if source.is_dir():
        records = _list_folder(source, truth_dir)
    elif source.suffix.lower() in (".csv", ".tsv", ".parquet", ".pq"):
        records = _list_index(source, truth_dir)
    else:
        raise ValueError(
            f"cannot read fields from {source}: give a folder of images or a .csv/.tsv/.parquet "
            "index with a path column"
        )
    _inherit_well_labels(records)
    seen: set[str] = set()
    for r in records:
        if r.field_id in seen:
            raise ValueError(
                f"field id {r.field_id!r} appears twice in {source}; give plate/well/field columns "
                "that identify each field, or distinct paths"
            )
        seen.add(r.field_id)
    return records


def read_field(path: str | Path, channel_axis: str = "auto") -> np.ndarray:
    """Read a field image as a (C, H, W) array in a storage dtype (uint8, uint16 or float32)."""
    return normalise_dtype(read_image(path, channel_axis))


def read_truth(path: str | Path) -> np.ndarray:
    """Read an instance label image (0 background, 1..N one object each) as (H, W) int32."""
    array = read_image(path)
    if array.shape[0] != 1:
        raise ValueError(f"{path}: an instance label image has one channel, got {array.shape[0]}")
    return array[0].astype(np.int32)


def resolve_channel(channel: str | int | None, names: tuple[str, ...]) -> int:
    """Index of the channel that holds nuclei/cells, from a name or an index (default 0)."""
    if channel is None or channel == "":
        return 0
    if isinstance(channel, int) or str(channel).isdigit():
        index = int(channel)
        if not 0 <= index < len(names):
            raise ValueError(
                f"--channel {index} is out of range: the fields have {len(names)} channel(s)"
            )
        return index
    if channel not in names:
        raise ValueError(f"--channel {channel!r} is not one of the channel names {list(names)}")
    return names.index(channel)
