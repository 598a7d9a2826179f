"""Frozen cross-validation folds stored with the dataset, identified by a hash, with a leakage audit.

Every trial of a study uses the same ``FoldSet``: ``DATASET/folds/<name>.parquet`` holds one fold
index per ``cell_id``; ``<name>.json`` holds the settings, the hash and the audit.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from cytotune.engine.io import atomic_write_json, atomic_write_parquet

from .dataset import CellDataset
from .schema import FOLDS_DIR

# method -> (needs group column, needs stratify column)
METHODS: dict[str, tuple[bool, bool]] = {
    "stratified-group": (True, True),
    "group": (True, False),
    "leave-one-group-out": (True, False),
    "stratified": (False, True),
    "random": (False, False),
}


@dataclass
class FoldSet:
    """A frozen assignment of every crop to one validation fold."""

    name: str
    method: str
    k: int
    group: str | None
    stratify: str | None
    seed: int
    dataset_hash: str
    hash: str
    audit: dict = field(default_factory=dict)
    assignment: pd.DataFrame | None = field(default=None, repr=False)  # cell_id, fold

    def split(self, fold: int) -> tuple[np.ndarray, np.ndarray]:
        """Cell ids of (train, validation) for ``fold``."""
        if not 0 <= fold < self.k:
            raise ValueError(
                f"fold {fold} out of range: this fold set has k={self.k} folds (0..{self.k - 1})"
            )
        is_val = self.assignment["fold"].to_numpy() == fold
        ids = self.assignment["cell_id"].to_numpy()
        return ids[~is_val], ids[is_val]

    def settings(self) -> dict:
        data = asdict(self)
        data.pop("assignment")
        return data


def make_folds(
    dataset: CellDataset | str | Path,
    *,
    k: int = 5,
    group: str | None = "well",
    stratify: str | None = "label",
    method: str | None = None,
    seed: int = 0,
    name: str | None = None,
    audit_naive: bool = False,
) -> FoldSet:
    """Assign every crop to a fold.

    Args:
        dataset: dataset (or its directory).
        k: number of folds (ignored for leave-one-group-out: one fold per group).
        group: column whose values never straddle train and validation (None: per-cell split).
        stratify: column whose distribution each fold keeps (None: no stratification).
        method: one of ``METHODS``; default stratified-group / group / stratified / random from
            whether ``group`` and ``stratify`` are given.
        seed: shuffling seed.
        name: fold-set name (default ``k{k}-{group}``).
        audit_naive: also report what a plain per-cell stratified k-fold would have leaked.
    """
    ds = dataset if isinstance(dataset, CellDataset) else CellDataset(dataset)
    meta = ds.metadata()
    if method is None:
        method = {
            (True, True): "stratified-group",
            (True, False): "group",
            (False, True): "stratified",
            (False, False): "random",
        }[(group is not None, stratify is not None)]
    if method not in METHODS:
        raise ValueError(f"fold method {method!r} is not one of {sorted(METHODS)}")
    needs_group, needs_strat = METHODS[method]
    group = group if needs_group else None
    stratify = stratify if needs_strat else None
    for role, column in (("--group", group), ("--stratify", stratify)):
        if column is not None and column not in meta.columns:
            usable = [c for c in meta.columns if c not in ("dtype", "shape", "source")]
            raise ValueError(
                f"{role} column {column!r} is not in dataset {ds.path}; available: {usable}"
            )
    if needs_group and group is None:
        raise ValueError(f"fold method {method!r} needs --group")
    groups = meta[group].astype(str).to_numpy() if group else None
    y = meta[stratify].astype(str).to_numpy() if stratify else np.zeros(len(meta), dtype=int)
    folds = _assign(method, k, groups, y, seed)
    k = int(folds.max()) + 1
    assignment = pd.DataFrame(
        {"cell_id": meta["cell_id"].to_numpy(), "fold": folds.astype(np.int16)}
    )
    name = name or f"k{k}-{group or 'cell'}"
    audit = leakage_audit(folds, groups, y if stratify else None)
    if audit_naive:
        if groups is None:
            raise ValueError("--audit-naive compares against a grouped split; pass --group")
        naive = _assign("stratified" if stratify else "random", k, None, y, seed)
        audit["naive_per_cell"] = leakage_audit(naive, groups, None)
    if ds.manifest.task != "regression" and "label" in meta.columns:
        audit["confounding"] = confounding_audit(
            meta, [c for c in ds.manifest.group_columns if c in meta.columns], folds
        )
    digest = hashlib.sha256(ds.manifest.content_hash.encode())
    order = np.argsort(assignment["cell_id"].to_numpy())
    for cell_id, fold in zip(assignment["cell_id"].to_numpy()[order], folds[order]):
        digest.update(f"{cell_id}\t{fold}\n".encode())
    return FoldSet(
        name,
        method,
        k,
        group,
        stratify,
        seed,
        ds.manifest.content_hash,
        digest.hexdigest()[:16],
        audit,
        assignment,
    )


def _assign(method: str, k: int, groups, y, seed: int) -> np.ndarray:
    from sklearn.model_selection import (
        GroupKFold,
        KFold,
        LeaveOneGroupOut,
        StratifiedGroupKFold,
        StratifiedKFold,
    )

    n = len(y)
    if method == "leave-one-group-out":
        splitter, k = LeaveOneGroupOut(), len(np.unique(groups))
    else:
        if k < 2:
            raise ValueError(f"--k must be >= 2, got {k}")
        n_units = len(np.unique(groups)) if groups is not None else n
        if n_units < k:
            raise ValueError(
                f"only {n_units} distinct {'groups' if groups is not None else 'crops'} for k={k} folds; lower --k or choose a finer --group"
            )
        splitter = {
            "stratified-group": lambda: StratifiedGroupKFold(k, shuffle=True, random_state=seed),
            "group": lambda: GroupKFold(k, shuffle=True, random_state=seed),
            "stratified": lambda: StratifiedKFold(k, shuffle=True, random_state=seed),
            "random": lambda: KFold(k, shuffle=True, random_state=seed),
        }[method]()
    folds = np.full(n, -1, dtype=np.int64)
    for fold, (_, val) in enumerate(splitter.split(np.zeros(n), y, groups)):
        folds[val] = fold
    assert (folds >= 0).all(), "every crop must be in exactly one validation fold"
    return folds


def leakage_audit(folds: np.ndarray, groups: np.ndarray | None, y: np.ndarray | None) -> dict:
    """Per fold: sizes, groups shared between train and validation, validation class counts."""
    per_fold = []
    for fold in range(int(folds.max()) + 1):
        val = folds == fold
        entry = {"fold": fold, "n_train": int((~val).sum()), "n_val": int(val.sum())}
        if groups is not None:
            shared = np.intersect1d(np.unique(groups[val]), np.unique(groups[~val]))
            entry["val_groups"] = int(len(np.unique(groups[val])))
            entry["shared_groups"] = int(len(shared))
            entry["val_cells_in_shared_groups"] = int(np.isin(groups[val], shared).sum())
        if y is not None:
            values, counts = np.unique(y[val], return_counts=True)
            entry["val_class_counts"] = {str(v): int(c) for v, c in zip(values, counts)}
        per_fold.append(entry)
    summary = {"folds": per_fold}
    if groups is not None:
        summary["total_shared_groups"] = sum(f["shared_groups"] for f in per_fold)
        summary["total_val_cells_in_shared_groups"] = sum(
            f["val_cells_in_shared_groups"] for f in per_fold
        )
    return summary


def confounding_audit(meta: pd.DataFrame, columns: list[str], folds: np.ndarray) -> list[dict]:
    """Group columns (well, plate, batch...) whose values each hold a single class.

    When every value of a column holds one class, the column alone determines the label: a
    model can separate the classes by that column's batch effects, and unless the folds hold
    those values out, validation cells share them with training cells. Per column: values, how
    many are single-class (and their cells' share), and the share of validation cells whose value
    also occurs in their fold's training split.
    """
    labels = meta["label"].astype(str).to_numpy()
    report = []
    for column in columns:
        values = meta[column].astype(str).to_numpy()
        frame = pd.DataFrame({"value": values, "label": labels})
        classes = frame.groupby("value")["label"].agg(lambda v: sorted(set(v)))
        single = classes[classes.map(len) == 1]
        in_train = 0
        for fold in range(int(folds.max()) + 1):
            val = folds == fold
            in_train += int(np.isin(values[val], np.unique(values[~val])).sum())
        report.append(
            {
                "column": column,
                "values": int(len(classes)),
                "single_class_values": int(len(single)),
                "cells_in_single_class_values": float(np.isin(values, single.index).mean()),
                "confounded": bool(len(classes) > 1 and len(single) == len(classes)),
                "val_cells_sharing_value_with_train": in_train / len(values),
                "examples": {v: c[0] for v, c in list(single.items())[:4]},
            }
        )
    return report


def save_folds(dataset_dir: str | Path, folds: FoldSet, overwrite: bool = False) -> Path:
    """Write ``folds/<name>.parquet`` and ``<name>.json``; refuse to replace a different fold set."""
    directory = Path(dataset_dir) / FOLDS_DIR
    directory.mkdir(exist_ok=True)
    meta_path = directory / f"{folds.name}.json"
    if meta_path.exists() and not overwrite:
        existing = json.loads(meta_path.read_text())
        if existing.get("hash") != folds.hash:
            raise FileExistsError(
                f"fold set {folds.name!r} already exists in {directory} with different splits; "
                "choose another --name or pass --overwrite (studies that used it will no longer resume)"
            )
    table_path = directory / f"{folds.name}.parquet"
    atomic_write_parquet(folds.assignment, table_path)
    atomic_write_json(meta_path, folds.settings())
    return meta_path


def list_folds(dataset_dir: str | Path) -> list[str]:
    directory = Path(dataset_dir) / FOLDS_DIR
    return sorted(p.stem for p in directory.glob("*.json")) if directory.is_dir() else []


def load_folds(dataset_dir: str | Path, name: str) -> FoldSet:
    """Load a fold set and check it still belongs to the dataset as it is now."""
    directory = Path(dataset_dir) / FOLDS_DIR
    meta_path = directory / f"{name}.json"
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"no fold set {name!r} in {dataset_dir} (have: {list_folds(dataset_dir) or 'none'}); "
            f"create it with `cytotune folds {dataset_dir} --name {name}`"
        )
    settings = json.loads(meta_path.read_text())
    from .schema import Manifest

    current = Manifest.load(dataset_dir).content_hash
    if settings["dataset_hash"] != current:
        raise ValueError(
            f"fold set {name!r} was made for another version of {dataset_dir} (dataset hash changed); "
            f"re-create it with `cytotune folds {dataset_dir} --name {name} --overwrite`"
        )
    assignment = pq.read_table(directory / f"{name}.parquet").to_pandas()
    return FoldSet(**settings, assignment=assignment)
