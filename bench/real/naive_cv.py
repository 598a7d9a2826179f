"""What naive per-cell CV would have reported: retrain a study's best configuration on other folds.

Takes the study's rank-1 trial (or ``--trial``), trains the same configuration for the same
number of epochs on another frozen fold set of the dataset (e.g. ``k5-cell``, made with
``cytotune folds DATA --k 5 --group none --name k5-cell``) and writes both fold means side by
side, so the leakage of the naive split shows as a number.

    python bench/real/naive_cv.py --study runs/real/bbbc021 --folds k5-cell --out naive.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
from cytotune.engine.export.source import select_trial
from cytotune.engine.search.crossval import CrossValidation
from cytotune.engine.search.study import FoldsSpec, StudyConfig

METRICS = ("f1_weighted", "accuracy", "balanced_accuracy", "roc_auc", "well/accuracy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study", required=True, type=Path)
    parser.add_argument("--folds", required=True, help="fold-set name under DATASET/folds/")
    parser.add_argument("--trial", default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    source = select_trial(args.study, trial_id=args.trial)
    study = StudyConfig.from_yaml(args.study / "study.yaml")
    epochs = int(source.trial["epochs_done"])
    sample = json.loads(source.trial["params"])
    naive = dataclasses.replace(
        study,
        folds=FoldsSpec(name=args.folds, k=study.folds.k, group=None),
        budget=dataclasses.replace(study.budget, max_epochs=epochs, grace_epochs=1),
    )
    cv = CrossValidation(naive, sample, device=args.device)
    start = time.perf_counter()
    report = {}
    for _ in range(epochs):
        report, _details = cv.run_epoch()
    result = {
        "trial_id": source.trial_id,
        "family": sample.get("family"),
        "epochs": epochs,
        "grouped_folds": study.folds.resolved_name,
        "naive_folds": args.folds,
        "seconds": time.perf_counter() - start,
    }
    for metric in METRICS:
        if f"val/{metric}" in report:
            result[f"naive/{metric}"] = report[f"val/{metric}"]
            result[f"naive/{metric}_std"] = report.get(f"val/{metric}_std")
            result[f"grouped/{metric}"] = source.trial.get(f"val/{metric}")
            result[f"grouped/{metric}_std"] = source.trial.get(f"val/{metric}_std")
    print(json.dumps(result, indent=1, default=float))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1, default=float))


if __name__ == "__main__":
    main()
