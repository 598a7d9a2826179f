"""Find every cell in whole fields of view and write fixed-size single-cell crops as a dataset.

FIELDS is a folder of field images (PNG/TIFF, 8/16-bit, 1..N channels; class sub-folders give
labels) or a CSV/TSV/Parquet index with a path column and optional label, plate, well, field
columns (a field without a label inherits its well's). Each cell becomes one row: a crop centred
on it, its mask, the label, the plate/well/field group columns, centroid/box/area. Cells cut by
the field edge, too small or too large are quarantined with the reason. DATASET/crop/ holds
cells.parquet, fields.csv and montage/<field>.png. With --cell-channel, each nucleus found on
--channel is grown into its whole cell on that channel (seeded watershed) and the crop is centred
on the cell body, with the body's mask (metadata: the nucleus's columns and body_* ones).

`cytotune crop train FIELDS --truth LABELS --out CHECKPOINT` trains the learned finder (Mask
R-CNN from random initialisation) on fields with instance label images; fields are split into
train/validation by group; `--model seed` trains the seed's two-scale anchor detector instead
(K-means++ anchors, GIoU, IoU-and-distance merge, Otsu masks inside the boxes).

Examples:
  cytotune crop ../shared/datasets/dsb2018/images --out data/nuclei --size 48
  cytotune crop plates/index.csv --out data/cells --channels dna,actin --channel dna --clean
  cytotune crop train ../shared/datasets/dsb2018/images --truth ../shared/datasets/dsb2018/labels --out finders/nuclei
  cytotune crop plates/index.csv --out data/cells --finder learned --checkpoint finders/nuclei
  cytotune crop train FIELDS --truth LABELS --out finders/seed --model seed
  cytotune crop plates/index.csv --out data/cells --finder seed --checkpoint finders/seed
  cytotune crop plates/index.csv --out data/cells --workers 8
  cytotune crop plates/index.csv --out data/cells --channels dna,actin --channel dna --cell-channel actin
"""

from __future__ import annotations

import argparse


def _csv(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(t.strip() for t in text.split(",") if t.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "fields",
        nargs="+",
        metavar="FIELDS",
        help="folder or index of fields; or 'train FIELDS' to train the learned finder",
    )
    parser.add_argument("--out", required=True, help="dataset directory (train: checkpoint dir)")
    parser.add_argument("--channels", help="comma-separated channel names (default ch0,ch1,...)")
    parser.add_argument(
        "--channel", help="name or index of the channel holding nuclei/cells (default 0)"
    )
    parser.add_argument(
        "--cell-channel",
        metavar="NAME",
        help="grow each nucleus into its cell body on this channel (e.g. actin; seeded "
        "watershed) and crop the body: centred on it, its mask, rules applied to it",
    )
    parser.add_argument(
        "--channel-axis",
        default="auto",
        choices=["auto", "first", "last"],
        help="where channels are in 3-D TIFF arrays (default: auto)",
    )
    parser.add_argument("--size", type=int, default=64, help="crop side in pixels (default 64)")
    parser.add_argument(
        "--clean", action="store_true", help="zero the pixels outside each cell's mask"
    )
    parser.add_argument(
        "--min-area", type=int, default=16, help="quarantine cells below this many px (16)"
    )
    parser.add_argument("--max-area", type=int, help="quarantine cells above this many px")
    parser.add_argument(
        "--finder", default="classical", help="classical (default, no training), learned or seed"
    )
    parser.add_argument("--checkpoint", help="learned/seed finder: checkpoint dir from train")
    parser.add_argument(
        "--finder-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="finder setting, repeatable, e.g. min_distance=6 or sigma=2",
    )
    parser.add_argument(
        "--label", default="unlabelled", help="label of fields without one (default unlabelled)"
    )
    parser.add_argument(
        "--montages", type=int, default=20, help="montage PNGs for the first N fields (20)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="processes reading, finding and cutting fields; the dataset is the same for any N "
        "(default: the CPU count, at most 4; 1: all in this process)",
    )
    parser.add_argument("--name", help="dataset name (default: the --out folder name)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    train = parser.add_argument_group("crop train (learned finder)")
    train.add_argument(
        "--model",
        default="learned",
        choices=["learned", "seed"],
        help="learned: Mask R-CNN (default); seed: the seed's two-scale anchor detector",
    )
    train.add_argument(
        "--truth", help="folder of instance label images named like the fields (or index column)"
    )
    train.add_argument(
        "--epochs", type=int, help="training epochs (default 36, as measured on dsb2018; seed 40)"
    )
    train.add_argument("--max-steps", type=int, help="stop after this many steps (smoke tests)")
    train.add_argument("--batch-size", type=int, help="fields per step (default 4; seed 16)")
    train.add_argument("--lr", type=float, help="AdamW learning rate (1e-3; seed 2e-3)")
    train.add_argument(
        "--min-size", type=int, help="learned: fields are resized to this short side (512)"
    )
    train.add_argument("--width", type=int, help="learned: channels of the FPN and the heads (256)")
    train.add_argument("--backbone", help="learned: resnet18 (default), resnet34 or resnet50")
    train.add_argument(
        "--val-fraction", type=float, default=0.2, help="share of groups for validation (0.2)"
    )
    train.add_argument(
        "--group", default="auto", help="split column: auto (well, plate or field) or a name"
    )
    train.add_argument("--crop-size", type=int, help="seed: square crop per field and step (384)")
    train.add_argument(
        "--score-threshold",
        type=float,
        help="keep cells scored at least this (crop train: default chosen on the validation "
        "fields; crop: default the checkpoint's)",
    )
    train.add_argument(
        "--mask-threshold",
        type=float,
        help="learned: mask probability a cell pixel exceeds (default: chosen on validation; "
        "crop: the checkpoint's)",
    )
    train.add_argument("--device", default="auto", help="auto, cpu or cuda")
    train.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def _finder_args(pairs: list[str]) -> dict:
    import json

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--finder-arg {pair!r} must look like KEY=VALUE")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def run(args: argparse.Namespace) -> int:
    if args.fields[0] == "train" and len(args.fields) > 1:
        return _run_train(args)
    if len(args.fields) != 1:
        raise ValueError(f"give one FIELDS folder or index, got {args.fields}")
    from .pipeline import CropOptions, crop_fields

    finder_args = _finder_args(args.finder_arg)
    if args.finder == "seed":
        from . import seed  # noqa: F401  (registers the "seed" finder)
    if args.finder in ("learned", "seed"):
        if not args.checkpoint:
            raise ValueError(
                f"--finder {args.finder} needs --checkpoint DIR (from `cytotune crop train`)"
            )
        finder_args.setdefault("checkpoint", args.checkpoint)
        if args.device != "auto":
            finder_args.setdefault("device", args.device)
    thresholds = {"score_threshold": args.score_threshold, "mask_threshold": args.mask_threshold}
    for key, value in thresholds.items():
        if value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if args.finder not in ("learned", "seed") or (key, args.finder) == (
            "mask_threshold",
            "seed",
        ):
            raise ValueError(f"{flag} does not apply to --finder {args.finder}; drop it")
        finder_args.setdefault(key, value)  # over the checkpoint's own choice
    options = CropOptions(
        size=args.size,
        channel=args.channel,
        cell_channel=args.cell_channel,
        channel_names=_csv(args.channels),
        channel_axis=args.channel_axis,
        clean=args.clean,
        min_area=args.min_area,
        max_area=args.max_area,
        finder=args.finder,
        finder_args=finder_args,
        default_label=args.label,
        montages=args.montages,
        name=args.name,
        overwrite=args.overwrite,
        workers=args.workers,
    )
    report = crop_fields(args.fields[0], args.out, options, progress=not args.quiet)
    m = report.manifest
    print(f"dataset    {args.out}")
    print(
        f"cells      {m.num_rows} cropped of {report.cells_found} found in {report.fields} fields "
        f"({report.quarantined} quarantined) in {report.seconds:.1f} s"
    )
    c, h, w = m.shape
    print(f"pixels     {c} x {h} x {w} {m.dtype}, channels {', '.join(m.channel_names)}")
    print("classes    " + ", ".join(f"{k} {n}" for k, n in m.class_counts.items()))
    print(f"groups     {', '.join(m.group_columns)}")
    for reason, count in report.reasons.most_common():
        print(f"quarantine {count:6d}  {reason}")
    print(f"details    {args.out}/quarantine.parquet, {args.out}/crop/ (cells, fields, montage)")
    return 0


def _run_train(args: argparse.Namespace) -> int:
    if len(args.fields) != 2:
        raise ValueError(f"`cytotune crop train` takes one FIELDS source, got {args.fields[1:]}")
    given = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr}
    given = {k: v for k, v in given.items() if v is not None}  # None: the model's default
    common = dict(
        max_steps=args.max_steps,
        val_fraction=args.val_fraction,
        group=args.group,
        channel=args.channel,
        channel_names=_csv(args.channels),
        device=args.device,
        seed=args.seed,
        score_threshold=args.score_threshold,
    )
    other = {
        "seed": {
            "--backbone": args.backbone,
            "--width": args.width,
            "--min-size": args.min_size,
            "--mask-threshold": args.mask_threshold,
        },
        "learned": {"--crop-size": args.crop_size},
    }[args.model]
    ignored = [flag for flag, value in other.items() if value is not None]
    if ignored:
        owner = "learned" if args.model == "seed" else "seed"
        raise ValueError(
            f"{', '.join(ignored)} only apply to `--model {owner}`; this trains `--model "
            f"{args.model}`: drop them or train the {owner} finder"
        )
    if args.model == "seed":
        from .seed_train import SeedTrainOptions, train_seed_finder

        options = SeedTrainOptions(
            **given, **common, crop_size=384 if args.crop_size is None else args.crop_size
        )
        return _report(args, train_seed_finder, options)
    from .train import TrainOptions, train_finder

    min_size = 512 if args.min_size is None else args.min_size
    options = TrainOptions(
        **given,
        **common,
        backbone=args.backbone or "resnet18",
        width=256 if args.width is None else args.width,
        min_size=min_size,
        max_size=max(1024, 2 * min_size),
        mask_threshold=args.mask_threshold,
    )
    return _report(args, train_finder, options)


def _report(args: argparse.Namespace, train, options) -> int:
    result = train(args.fields[1], args.out, options, truth=args.truth, progress=not args.quiet)
    print(f"checkpoint {args.out}")
    print(f"fields     {result['train_fields']} train, {result['val_fields']} validation")
    val = result.get("val") or {}
    if val:
        print(
            f"validation F1@0.5 {val['f1']:.3f}  precision {val['precision']:.3f}  "
            f"recall {val['recall']:.3f}  mAP(0.5:0.95) {val['map']:.3f}"
        )
    chosen = {k: result[k] for k in ("score_threshold", "mask_threshold") if k in result}
    if chosen:
        print("thresholds " + "  ".join(f"{k.split('_')[0]} {v:g}" for k, v in chosen.items()))
    print(f"time       {result['seconds']:.1f} s on {result['device']}")
    return 0
