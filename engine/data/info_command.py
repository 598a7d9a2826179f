"""Describe a dataset: channels, pixel type, classes or targets, groups, statistics, quarantine, folds.

Examples:
  cytotune info runs/demo/dataset
  cytotune info data/bbbc021 --quarantine      # also list every quarantined crop and why
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="dataset directory")
    parser.add_argument(
        "--quarantine", action="store_true", help="list every quarantined crop with its reason"
    )


def run(args: argparse.Namespace) -> int:
    from .dataset import CellDataset
    from .folds import list_folds

    ds = CellDataset(args.dataset)
    m = ds.manifest
    print(
        f"dataset    {ds.path} ({m.name}), schema v{m.schema_version}, hash {m.content_hash[:16]}"
    )
    print(f"rows       {m.num_rows} ({m.num_quarantined} quarantined), {len(m.shards)} shard(s)")
    print(
        f"pixels     {' x '.join(map(str, m.shape))} {m.dtype}; mask: {m.has_mask}, evidence: {m.has_evidence}"
    )
    print(
        f"task       {m.task}: "
        + (
            ", ".join(f"{c} {n}" for c, n in m.class_counts.items())
            if m.task == "classification"
            else ", ".join(m.targets)
        )
    )
    meta = ds.metadata()
    for col in m.group_columns:
        print(f"group      {col}: {meta[col].nunique()} distinct")
    print("channel    mean      std       min       p01       p99       max")
    s = m.stats
    for i, name in enumerate(m.channel_names):
        print(
            f"{name:10s} {s.mean[i]:<9.4g} {s.std[i]:<9.4g} {s.min[i]:<9.4g} {s.p01[i]:<9.4g} {s.p99[i]:<9.4g} {s.max[i]:<9.4g}"
        )
    print(
        f"folds      {', '.join(list_folds(ds.path)) or 'none (cytotune folds ' + str(ds.path) + ')'}"
    )
    if args.quarantine:
        q = ds.quarantine()
        for row in q.itertuples():
            print(f"quarantine {row.cell_id}  {row.source}  {row.reason}")
    return 0
