"""Run the embedded default end to end on synthetic cells, with no data of your own.

Steps: synthesise metastasis-task cells (3 channels: DNA, actin, vimentin; per-plate batch
effects; cell and evidence masks) -> check the dataset like an ingested one (manifest, stats,
quarantine) -> freeze 5 grouped, stratified folds by well with a leakage audit (and what plain
per-cell k-fold would leak). Later stages (search, explain, leaderboard) join as they land.
Example:
  cytotune demo --out runs/demo
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from engine.data import info_command
from engine.data.folds import make_folds, save_folds
from engine.data.folds_command import format_audit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="working directory (default runs/demo)")
    parser.add_argument("--n", type=int, default=2000, help="synthetic cells (default 2000)")
    parser.add_argument("--size", type=int, default=64, help="crop size in pixels (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --out")


def run(args: argparse.Namespace) -> int:
    from engine.synth import write_dataset

    out = Path(args.out)
    dataset = out / "dataset"
    start = time.perf_counter()
    print(f"[1/3] synthesising {args.n} metastasis-task cells at {args.size} px -> {dataset}")
    write_dataset("metastasis", dataset, n=args.n, size=args.size, seed=args.seed, overwrite=args.overwrite)
    print("[2/3] dataset check")
    info_command.run(argparse.Namespace(dataset=str(dataset), quarantine=False))
    print("[3/3] freezing 5 grouped folds by well")
    folds = make_folds(dataset, k=5, group="well", stratify="label", seed=args.seed, audit_naive=True)
    save_folds(dataset, folds, overwrite=args.overwrite)
    print(f"fold set {folds.name} hash {folds.hash}")
    print(format_audit(folds.audit, folds.group))
    print(f"done in {time.perf_counter() - start:.1f} s. Next: cytotune info {dataset}")
    return 0
