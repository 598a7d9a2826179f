"""Turn a user's single-cell crops into a cytotune dataset (sharded Parquet + manifest.json).

SOURCE is one of:
  * a folder of class sub-folders:        DIR/<class>/<crop files>
  * a CSV/TSV/Parquet index:               path,label[,plate,well,...]  (paths relative to the index;
                                           optional cell_id and mask/mask_path columns)
  * an .npz bundle:                        images (N,C,H,W or N,H,W,C), labels, optional masks,
                                           cell_ids and 1-D per-crop group arrays
Crop files: PNG, JPEG, BMP, TIFF (single/multi-page, multi-channel) and .npy. Pixels are stored
decoded with their dtype (uint8/uint16/float32); N channels stay N channels.

Bad crops (unreadable, truncated, wrong channel count, other size, mixed dtype, NaN/inf, empty
label, duplicate id) go to DATASET/quarantine.parquet with the reason; the command exits 1 when
their share exceeds --max-bad-fraction. Examples:
  cytotune ingest ../shared/datasets/bbbc021/index.csv --out data/bbbc021 --channels dna,tubulin,actin
  cytotune ingest crops/ --out data/mine --size 64 --fit pad
"""

from __future__ import annotations

import argparse

from .transforms import FIT_MODES, parse_size


def _csv(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(t.strip() for t in text.split(",") if t.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source", help="folder of class sub-folders, CSV/TSV/Parquet index, or .npz bundle"
    )
    parser.add_argument("--out", required=True, help="dataset directory to create")
    parser.add_argument(
        "--channels",
        help="comma-separated channel names, e.g. dna,actin,vimentin (default ch0,ch1,...)",
    )
    parser.add_argument(
        "--channel-order",
        help="comma-separated source channel indices to keep, in order, e.g. 2,0,1",
    )
    parser.add_argument(
        "--channel-axis",
        default="auto",
        choices=["auto", "first", "last"],
        help="where channels are in 3-D arrays (default: auto)",
    )
    parser.add_argument(
        "--size",
        help="target crop size, e.g. 64 or 64x48 (default: keep; other sizes are quarantined)",
    )
    parser.add_argument(
        "--fit",
        default="pad",
        choices=FIT_MODES,
        help="how --size is reached (default: pad, which centre-pads/crops without resampling)",
    )
    parser.add_argument(
        "--targets", help="comma-separated regression target columns (instead of label)"
    )
    parser.add_argument(
        "--groups",
        help="comma-separated group/metadata columns to keep (default: all extra index columns)",
    )
    parser.add_argument(
        "--max-bad-fraction",
        type=float,
        default=0.01,
        help="exit 1 when more than this share of crops is quarantined (default 0.01)",
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="decoding processes (default: CPU count, at most 8)"
    )
    parser.add_argument(
        "--rows-per-shard", type=int, default=4096, help="rows per Parquet shard (default 4096)"
    )
    parser.add_argument("--name", help="dataset name (default: the --out folder name)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing dataset at --out"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from .ingest import IngestOptions, ingest

    order = _csv(args.channel_order)
    options = IngestOptions(
        channel_names=_csv(args.channels),
        channel_order=None if order is None else tuple(int(i) for i in order),
        channel_axis=args.channel_axis,
        size=parse_size(args.size),
        fit_mode=args.fit,
        targets=_csv(args.targets) or (),
        groups=_csv(args.groups),
        max_bad_fraction=args.max_bad_fraction,
        workers=args.workers,
        rows_per_shard=args.rows_per_shard,
        name=args.name,
        overwrite=args.overwrite,
    )
    report = ingest(args.source, args.out, options, progress=not args.quiet)
    m = report.manifest
    print(f"dataset    {args.out}")
    print(
        f"rows       {m.num_rows} of {report.total} crops ({m.num_quarantined} quarantined, {report.bad_fraction:.2%})"
    )
    print(
        f"pixels     {m.shape[0]} x {m.shape[1]} x {m.shape[2]} {m.dtype}, channels {', '.join(m.channel_names)}"
    )
    if m.task == "classification":
        print(
            f"classes    {len(m.label_map)}: "
            + ", ".join(f"{c} {n}" for c, n in m.class_counts.items())
        )
    else:
        print(f"targets    {', '.join(m.targets)}")
    if m.group_columns:
        print(f"groups     {', '.join(m.group_columns)}")
    print(f"hash       {m.content_hash}")
    for reason, count in report.reasons.most_common():
        print(f"quarantine {count:6d}  {reason}")
    if m.num_quarantined:
        print(
            f"           details: {args.out}/quarantine.parquet (cytotune info {args.out} --quarantine)"
        )
    if report.bad_fraction > args.max_bad_fraction:
        print(
            f"error: {report.bad_fraction:.2%} of crops were quarantined, above --max-bad-fraction "
            f"{args.max_bad_fraction:.2%}; fix the input or raise the threshold"
        )
        return 1
    return 0
