"""Where the search's default trial errs on a real dataset: held-out errors per well and per
field of view, the most confident mistakes as a montage, the score of each fold.

Trains the default space's trial 0 over the grouped folds exactly as the search's
CrossValidation does (``bench/recipe_ablation.py``'s ``variant_cv``), keeps every fold's final
held-out predictions (test-time averaged, as scored) and joins them with the dataset's columns.

    python bench/real/errors.py data/bbbc021 --out /tmp/bbbc021-errors.json --montage /tmp/errors.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def held_out_predictions(dataset: str, folds: str, k: int, group: str, epochs: int, variant: str):
    """(predictions table, fold weighted F1s) of the default trial changed by ``variant``."""
    from cytotune.engine.train.trainer import FoldTrainer
    from recipe_ablation import variant_cv

    kept = []
    evaluate = FoldTrainer.evaluate

    def keeping(self, tta=None):
        result = evaluate(self, tta=tta)
        if tta:
            kept.append(result)
        return result

    FoldTrainer.evaluate = keeping
    try:
        cv = variant_cv(dataset, folds, k, group, variant, epochs, "cuda" if _cuda() else "cpu")
        details = []
        while not cv.finished:
            _, details = cv.step()
    finally:
        FoldTrainer.evaluate = evaluate
    rows = []
    for fold, ev in enumerate(kept):
        for cell, target, probs in zip(ev.cell_ids, ev.targets, ev.outputs):
            rows.append(
                {
                    "cell_id": cell,
                    "fold": fold,
                    "target": ev.names[int(target)],
                    "predicted": ev.names[int(np.argmax(probs))],
                    "confidence": float(np.max(probs)),
                    "target_index": int(target),
                    "probs": np.asarray(probs, dtype=np.float32),
                }
            )
    return pd.DataFrame(rows), [float(d["f1_weighted"]) for d in details]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def cell_columns(dataset: str, columns: list[str]) -> pd.DataFrame:
    import pyarrow.parquet as pq

    parts = sorted(Path(dataset, "data").glob("*.parquet"))
    return pd.concat([pq.read_table(p, columns=["cell_id", *columns]).to_pandas() for p in parts])


def summary(table: pd.DataFrame, by: str) -> list[dict]:
    """Cells, errors and error rate per value of ``by`` (most errors first)."""
    table = table.assign(error=table["target"] != table["predicted"])
    grouped = table.groupby(by).agg(
        cells=("error", "size"), errors=("error", "sum"), target=("target", "first")
    )
    grouped["error_rate"] = grouped["errors"] / grouped["cells"]
    grouped = grouped.sort_values("errors", ascending=False).reset_index()
    return json.loads(grouped.to_json(orient="records"))


def montage(dataset: str, errors: pd.DataFrame, path: Path, column: str, n: int = 48) -> None:
    """The ``n`` most confident mistakes (titled by ``column``), each channel scaled to its
    1-99.5 percentile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pyarrow.parquet as pq

    wanted = errors.sort_values("confidence", ascending=False).head(n)
    ids = set(wanted["cell_id"])
    images = {}
    for part in sorted(Path(dataset, "data").glob("*.parquet")):
        table = pq.read_table(part, columns=["cell_id", "image", "dtype", "shape"]).to_pandas()
        for row in table[table["cell_id"].isin(ids)].itertuples():
            images[row.cell_id] = np.frombuffer(row.image, dtype=row.dtype).reshape(row.shape)
    cols = 8
    rows = max(1, -(-len(wanted) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.8))
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, row in zip(np.ravel(axes), wanted.itertuples()):
        image = images[row.cell_id].astype(np.float32)  # (C, H, W)
        rgb = np.stack([image[min(c, len(image) - 1)] for c in range(3)], -1)
        low, high = np.percentile(rgb, 1, axis=(0, 1)), np.percentile(rgb, 99.5, axis=(0, 1))
        ax.imshow(np.clip((rgb - low) / np.maximum(high - low, 1e-6), 0, 1))
        ax.set_title(
            f"{getattr(row, column)[:12]} {row.target[:8]}\n-> {row.predicted[:8]} {row.confidence:.2f}",
            fontsize=6,
        )
    fig.suptitle(f"Most confident held-out mistakes ({column}, true -> predicted, confidence)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def cv_arguments(parser: argparse.ArgumentParser) -> None:
    """The dataset, its fold set and the epochs, as :func:`held_out_predictions` takes them."""
    parser.add_argument("dataset")
    parser.add_argument("--folds", default="k5-group")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--group", default="group")
    parser.add_argument("--epochs", type=int, default=40)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cv_arguments(parser)
    parser.add_argument("--variant", default="default", help="as in recipe_ablation.py")
    parser.add_argument("--columns", default="well,group", help="dataset columns to break down by")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--montage", type=Path)
    args = parser.parse_args()
    start = time.perf_counter()
    predictions, scores = held_out_predictions(
        args.dataset, args.folds, args.k, args.group, args.epochs, args.variant
    )
    columns = args.columns.split(",")
    table = predictions.merge(cell_columns(args.dataset, columns), on="cell_id", how="left")
    errors = table[table["target"] != table["predicted"]]
    result = {
        "dataset": args.dataset,
        "variant": args.variant,
        "f1_weighted": scores,
        "cells": len(table),
        "errors": len(errors),
        "confusion": json.loads(pd.crosstab(table["target"], table["predicted"]).to_json()),
        "by": {c: summary(table, c) for c in columns},
        "confident_errors": int((errors["confidence"] > 0.9).sum()),
        "wall_s": time.perf_counter() - start,
    }
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "by"}, indent=1))
    for column in columns:
        print(f"errors by {column} (top 10):")
        for row in result["by"][column][:10]:
            print("  ", row)
    if args.montage:
        montage(args.dataset, errors, args.montage, columns[0])


if __name__ == "__main__":
    main()
