"""Freeze cross-validation folds for a dataset, grouped and stratified, with a leakage audit.

The folds are stored in DATASET/folds/<name>.parquet + .json with a hash; every trial of a study
uses them unchanged. Grouped splits keep each group (well, plate, patient, field of view) entirely
in train or in validation; the audit counts groups shared between train and validation per fold
(0 for grouped splits) and, with --audit-naive, what a plain per-cell k-fold would have shared.
Examples:
  cytotune folds data/bbbc021 --k 5 --group group --audit-naive
  cytotune folds data/synth --k 5 --group well --stratify label
  cytotune folds data/mine --method leave-one-group-out --group plate
"""

from __future__ import annotations

import argparse

# The keys of folds.METHODS, named here so `--help` does not import pandas (a test compares).
METHOD_NAMES = ("stratified-group", "group", "leave-one-group-out", "stratified", "random")


def _none(text: str) -> str | None:
    return None if text.lower() in ("", "none") else text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="dataset directory (from ingest or synth)")
    parser.add_argument("--k", type=int, default=5, help="number of folds (default 5)")
    parser.add_argument(
        "--group",
        type=_none,
        default="well",
        help="group column kept out of train when in validation (default well; 'none' for per-cell)",
    )
    parser.add_argument(
        "--stratify",
        type=_none,
        default="label",
        help="column whose class balance each fold keeps (default label; 'none' to disable)",
    )
    parser.add_argument(
        "--method",
        help=f"split method: {', '.join(METHOD_NAMES)} (default: from --group/--stratify)",
    )
    parser.add_argument("--seed", type=int, default=0, help="shuffling seed (default 0)")
    parser.add_argument("--name", help="fold-set name (default k{K}-{group})")
    parser.add_argument(
        "--audit-naive",
        action="store_true",
        help="also report the leakage of plain per-cell k-fold",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing fold set of the same name"
    )


def run(args: argparse.Namespace) -> int:
    from .folds import make_folds, save_folds

    folds = make_folds(
        args.dataset,
        k=args.k,
        group=args.group,
        stratify=args.stratify,
        method=args.method,
        seed=args.seed,
        name=args.name,
        audit_naive=args.audit_naive,
    )
    path = save_folds(args.dataset, folds, overwrite=args.overwrite)
    print(
        f"fold set   {folds.name} ({folds.method}, k={folds.k}, group={folds.group}, stratify={folds.stratify}, seed={folds.seed})"
    )
    print(f"hash       {folds.hash}")
    print(f"saved      {path}")
    print(format_audit(folds.audit, folds.group))
    return 0


def format_audit(audit: dict, group: str | None) -> str:
    """Leakage audit as a small text table."""
    lines = ["fold  n_train  n_val  shared_groups  val_cells_in_shared  val classes"]
    for f in audit["folds"]:
        classes = ", ".join(f"{c} {n}" for c, n in f.get("val_class_counts", {}).items())
        lines.append(
            f"{f['fold']:4d}  {f['n_train']:7d}  {f['n_val']:5d}  {f.get('shared_groups', '-'):>13}  {f.get('val_cells_in_shared_groups', '-'):>19}  {classes}"
        )
    if group is not None:
        lines.append(
            f"leakage: {audit['total_shared_groups']} values of {group!r} shared between train and validation"
        )
    naive = audit.get("naive_per_cell")
    if naive:
        total = sum(f["n_val"] for f in naive["folds"])
        lines.append(
            f"naive per-cell k-fold would share {naive['total_shared_groups']} (fold, {group!r} value) pairs; "
            f"{naive['total_val_cells_in_shared_groups']} of {total} validation cells "
            f"({naive['total_val_cells_in_shared_groups'] / max(total, 1):.1%}) would have their {group} in train"
        )
    for entry in audit.get("confounding", []):
        if not entry["confounded"] or entry["val_cells_sharing_value_with_train"] == 0:
            continue  # not confounded, or held out by the split itself
        column = entry["column"]
        examples = ", ".join(f"{v} -> {c}" for v, c in entry["examples"].items())
        examples += ", ..." if entry["values"] > 4 else ""
        lines.append(
            f"WARNING confounding: every value of {column!r} holds a single class "
            f"({entry['values']} values: {examples}); a model can separate the classes by "
            f"{column!r} effects alone (plate position, staining, illumination), and "
            f"{entry['val_cells_sharing_value_with_train']:.0%} of validation cells share their "
            f"{column!r} with training cells. Grouped CV cannot tell biology from batch here: "
            f"compare with a model on batch-only features (background intensity: see "
            f"docs/results.md, BBBC021) and check where the population maps put the evidence."
        )
    return "\n".join(lines)
