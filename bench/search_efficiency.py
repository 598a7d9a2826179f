"""Search efficiency: ASHA + TPE vs a full, unpruned TPE run of the same space and trial count on
synthetic cells. Reports the best fold-mean score of each (completed trials) and the GPU time
(sum of trial durations x GPU fraction).

    python bench/search_efficiency.py --out bench/results/search_efficiency.json
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import machine, study, write_result


def run(root: Path, name: str, scheduler: str, args) -> dict:
    from cytotune.engine.search import StudyConfig
    from cytotune.engine.search.runner import run_search

    path = study(
        root / f"{name}.yaml",
        name=name,
        dataset=str(root / "data"),
        folds={"k": 3, "group": "well"},
        space=args.space,
        budget={
            "trials": args.trials,
            "max_epochs": args.epochs,
            "grace_epochs": 1,
            "max_concurrent": args.concurrent,
        },
        resources={"cpus": 2, "gpus": args.gpus},
        scheduler=scheduler,
        objective={"metric": "balanced_accuracy"},
        train={"loader": "inprocess", "augment": "standard"},
        seed=args.seed,
        storage=str(root / "studies"),
    )
    store = run_search(StudyConfig.from_yaml(path), verbose=False)
    trials = store.table("trials")
    completed = trials[trials["status"] == "completed"]
    gpu_s = float(((trials["ended_at"] - trials["started_at"]) * args.gpus).sum())
    return {
        "best": float(completed["val/balanced_accuracy"].max()),
        "gpu_s": gpu_s,
        "completed": len(completed),
        "pruned": int((trials["status"] == "pruned").sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", default="microtubule")
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--space", default="demo")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--gpus", type=float, default=0.25)
    parser.add_argument("--concurrent", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from cytotune.engine.cluster import ensure_ray
    from cytotune.engine.synth import write_dataset

    ensure_ray()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_dataset(
            args.task, root / "data", n=args.n, size=args.size, seed=args.seed, progress=False
        )
        full = run(root, "full", "none", args)
        asha = run(root, "asha", "asha", args)
    write_result(
        args.out,
        {
            "bench": "search_efficiency",
            "task": args.task,
            "space": args.space,
            "trials": args.trials,
            "epochs": args.epochs,
            "full_best": full["best"],
            "asha_best": asha["best"],
            "gap_pp": 100 * (full["best"] - asha["best"]),
            "full_gpu_s": full["gpu_s"],
            "asha_gpu_s": asha["gpu_s"],
            "gpu_time_ratio": asha["gpu_s"] / full["gpu_s"],
            "asha_pruned": asha["pruned"],
            "machine": machine(),
        },
    )


if __name__ == "__main__":
    main()
