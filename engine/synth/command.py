"""Generate synthetic fluorescence cells with ground truth as a cytotune dataset.

Tasks:
  metastasis   dna, actin, vimentin; normal vs metastasizing (vimentin reaching the periphery
               vs a perinuclear cage; irregular vs round cells)
  microtubule  tubulin; untreated vs low_dose vs high_dose (radial array vs bundled, tangled
               networks; the two doses differ only in degree)

Every row has a cell mask, an evidence mask (where the class signal was drawn), the group
columns plate/well/field (class-pure wells, per-plate gain/offset batch effects) and the
metadata column phenotype_present. Same seed and options give the same bytes and content hash.

Examples:
  cytotune synth --task metastasis --out data/metastasis
  cytotune synth --task microtubule --out data/mt --n 6000 --weak-fraction 0.5
  cytotune synth --task metastasis --out data/leaky --confound 1.0   # class = plate
  cytotune synth --task metastasis --out fields/meta --as-fields 4  # whole fields for crop
"""

from __future__ import annotations

import argparse

from .tasks import list_tasks  # the package registers the tasks (numpy only)

# Task options settable from the command line; flags left unset keep the task's defaults.
OPTION_NAMES = ("weak_fraction", "confound", "plates", "wells_per_class", "fields_per_well")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, choices=list_tasks(), help="which synthetic task")
    parser.add_argument("--out", required=True, help="output dataset directory")
    parser.add_argument("--n", type=int, default=2000, help="number of cells (default 2000)")
    parser.add_argument("--size", type=int, default=64, help="crop side in pixels (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--weak-fraction",
        type=float,
        help="(0, 1]: share of cells in non-reference wells that show the phenotype (default 1)",
    )
    parser.add_argument(
        "--confound", type=float, help="[0, 1]: how strongly class follows plate (default 0)"
    )
    parser.add_argument("--plates", type=int, help="number of plates (task default: 2 or 3)")
    parser.add_argument("--wells-per-class", type=int, help="wells per class per plate (default 4)")
    parser.add_argument("--fields-per-well", type=int, help="fields per well (default 4)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    parser.add_argument("--montage", metavar="PNG", help="also write a montage of the first cells")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--as-fields",
        type=int,
        metavar="GRID",
        help="write whole fields of GRID x GRID cells (TIFF, truth labels, index.csv) for "
        "`cytotune crop`, one per plate/well/field of the layout, instead of crops (--n unused)",
    )


def run(args: argparse.Namespace) -> int:
    from .generate import render, write_dataset
    from .montage import montage

    options = {
        name: getattr(args, name) for name in OPTION_NAMES if getattr(args, name) is not None
    }
    if args.as_fields is not None:
        from .fields import write_fields

        index = write_fields(args.task, args.out, grid=args.as_fields, size=args.size,
                             seed=args.seed, **options)  # fmt: skip
        print(f"wrote fields of {args.as_fields} x {args.as_fields} cells; index {index}")
        return 0
    manifest = write_dataset(
        args.task,
        args.out,
        n=args.n,
        size=args.size,
        seed=args.seed,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        **options,
    )
    counts = ", ".join(f"{name} {count}" for name, count in manifest.class_counts.items())
    c, h, w = manifest.shape
    print(f"wrote {manifest.num_rows} rows ({c} x {h} x {w} {manifest.dtype}) to {args.out}")
    print(f"task {args.task}: channels {', '.join(manifest.channel_names)}; classes: {counts}")
    print(f"content hash {manifest.content_hash}")
    if args.montage:
        n_show = min(args.n, 8 * len(manifest.class_counts))
        batch = render(args.task, n_show, size=args.size, seed=args.seed, **options)
        print(f"montage {montage(batch, args.montage)}")
    return 0
