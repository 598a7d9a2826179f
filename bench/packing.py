"""Packing: aggregate training images/s of 4 trials sharing one GPU (0.25 GPU each) vs one trial
alone with the whole GPU, same configuration (ResNet-18 at 64 px, bf16, channels_last).

    python bench/packing.py --out bench/results/packing.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import fixed_space, machine, random_dataset, study, throughput_train, write_result


def run(
    root: Path, name: str, trials: int, gpus: float, cpus: int, epochs: int, batch: int, loader: str
) -> dict:
    from cytotune.engine.search import StudyConfig
    from cytotune.engine.search.runner import run_search

    space = fixed_space(root / "r18.yaml", "backbone", {"backbone": "resnet18"}, batch)
    path = study(
        root / f"{name}.yaml",
        name=name,
        dataset=str(root / "data"),
        folds={"k": 2, "group": "well"},
        space=str(space),
        budget={
            "trials": trials,
            "max_epochs": epochs,
            "grace_epochs": 1,
            "max_concurrent": trials,
        },
        resources={"cpus": cpus, "gpus": gpus},
        scheduler="none",
        train=throughput_train(loader),
        storage=str(root / "studies"),
    )
    start = time.perf_counter()
    store = run_search(StudyConfig.from_yaml(path), verbose=False)
    wall = time.perf_counter() - start
    epochs_table = store.table("epochs")
    steady = epochs_table[(epochs_table["fold"] == -1) & (epochs_table["epoch"] > 1)]
    # trials run concurrently: aggregate = sum over trials of their steady-state training rate
    per_trial = steady.groupby("trial_id")["images_per_s"].median()
    return {"trials": trials, "aggregate_images_per_s": float(per_trial.sum()), "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=16384)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--loader", default="inprocess")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from cytotune.engine.cluster import ensure_ray

    ensure_ray()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        random_dataset(root / "data", args.n, 64)
        alone = run(root, "alone", 1, 1.0, 3, args.epochs, args.batch, args.loader)
        packed = run(root, "packed", 4, 0.25, 3, args.epochs, args.batch, args.loader)
    write_result(
        args.out,
        {
            "bench": "packing",
            "model": "resnet18-64",
            "batch": args.batch,
            "loader": args.loader,
            "one_trial_images_per_s": alone["aggregate_images_per_s"],
            "four_trials_images_per_s": packed["aggregate_images_per_s"],
            "ratio": packed["aggregate_images_per_s"] / alone["aggregate_images_per_s"],
            "wall_one_s": alone["wall_s"],
            "wall_four_s": packed["wall_s"],
            "machine": machine(),
        },
    )


if __name__ == "__main__":
    main()
