"""End to end on synthetic fields: `cytotune crop` -> search vs searching the same cells as crops.

The synth module renders the same cells (same seed, layout and ids) two ways: as crops straight
from its writer, and tiled into whole fields of ``grid`` x ``grid`` cells (``--as-fields``) that
`cytotune crop` (classical finder on the DNA channel; with ``--cell-channel actin``, the whole
cells grown around those nuclei on actin) turns back into a dataset. Both datasets get the same
frozen folds (k by well) and the same search (by default trial 0 of the ``demo`` space: its
default small CNN, every fold trained to ``--epochs``); the script prints both
balanced accuracies (fold mean ± std), their difference and the cell finding counts, and
appends one JSON line to ``--out``. The default space's trial 0 (a ResNet-18) is a GPU run:
``--space default``.

  python bench/crop_end_to_end.py --out bench/results/crop_end_to_end.json
  python bench/crop_end_to_end.py --weak-fraction 0.6 --train-seeds 3 --out bench/results/crop_end_to_end.json
  python bench/crop_end_to_end.py --weak-fraction 0.6 --seed 1 --cell-channel actin   # whole cells
  python bench/crop_end_to_end.py --grid 4 --size 32 --plates 2 --wells-per-class 3 --fields-per-well 4 --epochs 16   # the test's size
  python bench/crop_end_to_end.py --space default --epochs 40 --gpus 1 --cpus 4   # GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import machine, study, write_result  # noqa: E402

TASK = "metastasis"
CHANNELS = "dna,actin,vimentin"


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--grid", type=int, default=6, help="cells per field side (default 6)")
    p.add_argument("--size", type=int, default=48, help="crop / tile side in px (default 48)")
    p.add_argument("--plates", type=int, default=3)
    p.add_argument("--wells-per-class", type=int, default=4)
    p.add_argument("--fields-per-well", type=int, default=4)
    p.add_argument(
        "--weak-fraction",
        type=float,
        help="share of cells in metastasizing wells that show the phenotype (default 1: all)",
    )
    p.add_argument(
        "--cell-channel",
        help="crop the whole cells grown on this channel (`cytotune crop --cell-channel`, e.g. "
        "actin) instead of the nuclei (default)",
    )
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--space", default="demo", help="search space (default demo)")
    p.add_argument("--trials", type=int, default=1, help="trials per search (1: trial 0)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--augment", default="cells")
    p.add_argument("--cpus", type=float, default=1, help="CPUs per trial")
    p.add_argument("--gpus", type=float, default=0, help="GPUs per trial")
    p.add_argument("--seed", type=int, default=0, help="seed of the cells and of the first search")
    p.add_argument(
        "--train-seeds",
        type=int,
        default=1,
        help="searches per dataset, study seeds seed .. seed+N-1 (training noise; default 1)",
    )
    p.add_argument("--work", help="working directory (default: a temporary one)")
    p.add_argument("--out", type=Path, help="append the result as one JSON line")
    return p.parse_args(argv)


def run_cli(*argv: str) -> float:
    from cytotune.engine.cli import main

    start = time.perf_counter()
    assert main(list(argv)) == 0, argv
    return time.perf_counter() - start


def search(root: Path, name: str, args: argparse.Namespace, seed: int) -> dict:
    """One search of ``data/<name>`` with study seed ``seed``: the best trial's fold scores."""
    from cytotune.engine.search.runner import run_search
    from cytotune.engine.search.study import StudyConfig

    path = study(
        root / f"{name}-t{seed}.yaml",
        name=f"{name}-t{seed}",
        dataset=f"data/{name}",
        folds={"k": args.folds, "group": "well"},
        space=args.space,
        budget={"trials": args.trials, "max_epochs": args.epochs},
        resources={"cpus": args.cpus, "gpus": args.gpus},
        objective={"metric": "balanced_accuracy"},
        train={"loader": "inprocess", "batch_size": args.batch_size, "augment": args.augment},
        well_column="well",
        seed=seed,
        storage="studies",
    )
    start = time.perf_counter()
    store = run_search(StudyConfig.from_yaml(path), verbose=False)
    seconds = time.perf_counter() - start
    trials = store.table("trials")
    best = trials.sort_values("val/balanced_accuracy", ascending=False).iloc[0]
    folds = store.table("folds")
    folds = folds[folds["trial_id"] == best["trial_id"]].sort_values("fold")
    scores = folds["balanced_accuracy"].astype(float)
    return {
        "train_seed": seed,
        "mean": float(scores.mean()),
        "std": float(scores.std(ddof=0)),
        "folds": [round(float(s), 4) for s in scores],
        "model": {k: v for k, v in json.loads(best["params"]).items() if k != "train"},
        "seconds": round(seconds, 1),
    }


def main(argv=None) -> int:
    args = parse(argv)
    from cytotune.engine.cluster import ensure_ray
    from cytotune.engine.data import CellDataset

    out = args.out.resolve() if args.out else None
    root = Path(args.work or tempfile.mkdtemp(prefix="crop_e2e_")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    os.chdir(root)
    layout = ["--plates", str(args.plates), "--wells-per-class", str(args.wells_per_class),
              "--fields-per-well", str(args.fields_per_well), "--size", str(args.size),
              "--seed", str(args.seed)]  # fmt: skip
    if args.weak_fraction is not None:
        layout += ["--weak-fraction", str(args.weak_fraction)]
    n = 2 * args.plates * args.wells_per_class * args.fields_per_well * args.grid**2
    t_fields = run_cli(
        "synth", "--task", TASK, "--out", "fields", "--as-fields", str(args.grid), *layout
    )
    cells = ["--cell-channel", args.cell_channel] if args.cell_channel else []
    t_crop = run_cli("crop", "fields/index.csv", "--out", "data/crops", "--channels", CHANNELS,
                     "--channel", "dna", *cells, "--size", str(args.size), "--quiet",
                     "--montages", "4")  # fmt: skip
    t_direct = run_cli("synth", "--task", TASK, "--out", "data/direct", "--n", str(n), *layout,
                       "--no-progress")  # fmt: skip
    crops = CellDataset(root / "data/crops")
    quarantined = len(crops.quarantine())
    ensure_ray()
    result = {"bench": "crop_end_to_end", "machine": machine(), "cpus": os.cpu_count()}
    for name in ("crops", "direct"):
        runs = [search(root, name, args, args.seed + t) for t in range(args.train_seeds)]
        means = [r["mean"] for r in runs]
        result[name] = {
            "mean": float(np.mean(means)),  # over training seeds of the fold means
            "fold_std": float(np.mean([r["std"] for r in runs])),
            "seed_std": float(np.std(means)),
            "model": runs[0].pop("model"),
            "runs": runs,
        }
        for r in runs[1:]:
            r.pop("model")
    diff = result["crops"]["mean"] - result["direct"]["mean"]
    result.update(
        cells=n,
        cropped=len(crops),
        quarantined=quarantined,
        grid=args.grid,
        size=args.size,
        layout={
            "plates": args.plates,
            "wells_per_class": args.wells_per_class,
            "fields_per_well": args.fields_per_well,
        },
        weak_fraction=args.weak_fraction,
        cell_channel=args.cell_channel,
        folds=args.folds,
        space=args.space,
        trials=args.trials,
        epochs=args.epochs,
        train={"batch_size": args.batch_size, "augment": args.augment},
        seed=args.seed,
        train_seeds=args.train_seeds,
        difference_points=round(100 * diff, 2),
        seconds={
            "synth_fields": round(t_fields, 1),
            "crop": round(t_crop, 1),
            "synth_direct": round(t_direct, 1),
        },
        load_average=[round(x, 2) for x in os.getloadavg()],
    )
    for name in ("crops", "direct"):
        r = result[name]
        print(f"{name:7s} balanced accuracy {r['mean']:.4f}, fold std {r['fold_std']:.4f}, "
              f"seed std {r['seed_std']:.4f}")  # fmt: skip
        for run in r["runs"]:
            print(f"        seed {run['train_seed']}: {run['mean']:.4f} ± {run['std']:.4f}  "
                  f"folds {run['folds']}  ({run['seconds']:.0f} s)")  # fmt: skip
    print(f"difference (crops - direct) {100 * diff:+.2f} points; {len(crops)} of {n} cells "
          f"cropped, {quarantined} quarantined")  # fmt: skip
    write_result(out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
