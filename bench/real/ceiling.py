"""How far a dataset's score can go with more compute than a search is given: the default trial
trained several times (other seeds, a deeper backbone, more epochs) over the same grouped folds,
and the ensemble of those members (held-out class probabilities averaged per cell).

If an ensemble of several members, each as costly as the search's best trial, stays under the
plain loop + 1 point, no search within twice the loop's GPU time can reach it either.

    python bench/real/ceiling.py data/bbbc021 --member seed=0 --member seed=1 \\
        --member "backbone.backbone=resnet34" --out /tmp/ceiling.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))


def fold_scores(table: pd.DataFrame) -> list[float]:
    """Weighted F1 of each fold of ``table`` (columns fold, target_index, probs)."""
    from sklearn.metrics import f1_score

    scores = []
    for _, part in table.groupby("fold"):
        predicted = np.argmax(np.stack(part["probs"]), axis=1)
        scores.append(float(f1_score(part["target_index"], predicted, average="weighted")))
    return scores


def ensemble(members: list[pd.DataFrame]) -> pd.DataFrame:
    """Per cell: its fold, target and the members' mean probabilities."""
    first = members[0].set_index("cell_id")
    stacked = np.stack(
        [np.stack(m.set_index("cell_id").loc[first.index, "probs"]) for m in members]
    )
    return pd.DataFrame(
        {
            "cell_id": first.index,
            "fold": first["fold"].to_numpy(),
            "target_index": first["target_index"].to_numpy(),
            "probs": list(stacked.mean(axis=0)),
        }
    )


def summarise(scores: list[float]) -> dict:
    return {
        "f1_weighted": scores,
        "mean": float(np.mean(scores)),
        "std": float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0,
    }


def main() -> None:
    from errors import cv_arguments, held_out_predictions

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cv_arguments(parser)
    parser.add_argument(
        "--member", action="append", default=None,
        help="a variant as in recipe_ablation.py (repeat; default: seeds 0-2)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    members, rows = [], []
    for text in args.member or ["seed=0", "seed=1", "seed=2"]:
        start = time.perf_counter()
        table, _ = held_out_predictions(
            args.dataset, args.folds, args.k, args.group, args.epochs, text
        )
        members.append(table)
        combined = ensemble(members)
        row = {
            "member": text,
            "wall_s": time.perf_counter() - start,
            "alone": summarise(fold_scores(table)),
            "ensemble_so_far": summarise(fold_scores(combined)),
            "ensemble_errors": int(
                (np.argmax(np.stack(combined["probs"]), axis=1) != combined["target_index"]).sum()
            ),
            "cells": len(combined),
        }
        rows.append(row)
        print(
            f"{text:32s} alone {row['alone']['mean']:.4f} ± {row['alone']['std']:.4f}   "
            f"ensemble of {len(members)}: {row['ensemble_so_far']['mean']:.4f} ± "
            f"{row['ensemble_so_far']['std']:.4f} ({row['ensemble_errors']} errors)   "
            f"{row['wall_s']:.1f} s",
            flush=True,
        )
        args.out.write_text(json.dumps({"dataset": args.dataset, "members": rows}, indent=1))


if __name__ == "__main__":
    main()
