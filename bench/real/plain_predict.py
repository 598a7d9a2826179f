"""Use a pulled bundle from plain torch + pyarrow (no cytotune import) on a dataset's crops.

Loads ``model.torchscript.pt`` (normalisation inside the graph), feeds raw float32 crops read
straight from the dataset's Parquet shards, and scores the cells the bundle's fold model never
trained on (that fold's validation cells, from ``folds/<name>.parquet``). Prints and writes
accuracy and weighted F1 (computed here with numpy) next to the fold score stored in the bundle,
so a user sees the bundle reproduce its cross-validation number outside the engine.

    python bench/real/plain_predict.py BUNDLE DATASET [--out result.json] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch


def weighted_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Support-weighted mean of per-class F1 over the classes present in ``y_true``."""
    classes, support = np.unique(y_true, return_counts=True)
    scores = []
    for c in classes:
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.sum(np.array(scores) * support) / support.sum())


def load_crops(dataset: Path, manifest: dict, cell_ids: set[str]):
    """(cell ids, raw float32 crops N,C,H,W, integer labels) of the chosen cells."""
    ids, images, labels = [], [], []
    for shard in manifest["shards"]:
        table = pq.read_table(dataset / shard, columns=["cell_id", "image", "label"])
        keep = np.isin(table.column("cell_id").to_numpy(zero_copy_only=False), list(cell_ids))
        table = table.filter(keep)
        raw = b"".join(table.column("image").to_pylist())
        images.append(np.frombuffer(raw, dtype=manifest["dtype"]).reshape(-1, *manifest["shape"]))
        ids += table.column("cell_id").to_pylist()
        labels += [manifest["label_map"][str(v)] for v in table.column("label").to_pylist()]
    return ids, np.concatenate(images).astype(np.float32), np.array(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=512)
    args = parser.parse_args()

    config = json.loads((args.bundle / "config.json").read_text())
    provenance = json.loads((args.bundle / "provenance.json").read_text())
    metrics = json.loads((args.bundle / "metrics.json").read_text())
    manifest = json.loads((args.dataset / "manifest.json").read_text())
    fold = config["members"][0]["fold"]
    fold_set = provenance["folds"]["name"]
    assignment = pq.read_table(args.dataset / "folds" / f"{fold_set}.parquet").to_pandas()
    val_ids = set(assignment.loc[assignment["fold"] == fold, "cell_id"].astype(str))
    ids, crops, labels = load_crops(args.dataset, manifest, val_ids)

    model = torch.jit.load(str(args.bundle / "model.torchscript.pt"), map_location=args.device)
    model.eval()
    start = time.perf_counter()
    outputs = []
    with torch.inference_mode():
        for i in range(0, len(crops), args.batch_size):
            batch = torch.from_numpy(crops[i : i + args.batch_size]).to(args.device)
            outputs.append(model(batch).float().cpu())
    seconds = time.perf_counter() - start
    probabilities = torch.cat(outputs).numpy()
    predicted = probabilities.argmax(axis=1)
    stored = next(row for row in metrics["folds"] if int(row["fold"]) == fold)
    result = {
        "bundle": str(args.bundle),
        "fold": fold,
        "fold_set": fold_set,
        "cells": len(ids),
        "accuracy": float(np.mean(predicted == labels)),
        "f1_weighted": weighted_f1(labels, predicted),
        "stored_fold_f1_weighted": stored.get("f1_weighted"),
        "stored_fold_accuracy": stored.get("accuracy"),
        "probabilities_sum_to_one": bool(np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)),
        "crops_per_s": len(ids) / seconds,
        "device": args.device,
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
