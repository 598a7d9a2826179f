"""K folds of one configuration trained one after another vs all at once, step by step, each
fold on its own CUDA stream (issue 13, item 3: a trial must use its GPU as a bare loop does).

At 64 px a captured ResNet step is hundreds of small kernels that leave most of an H100/H200
idle; folds replayed on separate streams can fill it. Both orders use cytotune's ``FoldTrainer``
(the search's trial 0 recipe); the concurrent order drives the trainers' own steps
(``FoldTrainer.steps``). Prints weighted F1 over folds with test-time averaging, wall seconds
and training images/s per mode.

    python bench/fold_streams.py data/mitocheck --mode sequential --mode streams \\
        --variant default --variant batch_size=128 --out /tmp/fold_streams.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from recipe_ablation import variant_cv


def score(trainers) -> list[float]:
    from sklearn.metrics import f1_score

    scores = []
    for trainer in trainers:
        evaluation = trainer.evaluate(tta=True)
        predicted = evaluation.outputs.argmax(1)
        scores.append(float(f1_score(evaluation.targets, predicted, average="weighted")))
    return scores


def run(dataset: str, folds: str, k: int, group: str, text: str, mode: str, epochs: int) -> dict:
    import torch
    from cytotune.engine.train.parallel import train_concurrently

    torch.cuda.synchronize()
    start = time.perf_counter()
    cv = variant_cv(dataset, folds, k, group, text, epochs, "cuda")  # the search's own trainers
    trainers = [cv._trainer(fold) for fold in range(k)]
    build_s = time.perf_counter() - start
    if mode == "sequential":
        for trainer in trainers:
            trainer.fit()
    else:
        train_concurrently(trainers)
    torch.cuda.synchronize()
    train_s = time.perf_counter() - start - build_s
    scores = score(trainers)
    wall = time.perf_counter() - start
    images = sum(r["images"] for t in trainers for r in t.history)
    return {
        "variant": text,
        "mode": mode,
        "f1_weighted": scores,
        "mean": float(np.mean(scores)),
        "std": float(np.std(scores, ddof=1)),
        "wall_s": wall,
        "build_s": build_s,
        "train_s": train_s,
        "train_images_per_s": images / train_s,
        "batch_size": trainers[0].config.batch_size,
        "graphed": [t.graphed for t in trainers],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset")
    parser.add_argument("--folds", default="k5-group")
    parser.add_argument("--k", type=int, default=5, help="folds in the set (default 5)")
    parser.add_argument("--group", default="group", help="fold group column (default group)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--mode", action="append", choices=("sequential", "streams"))
    parser.add_argument("--variant", action="append", default=None)
    parser.add_argument("--cudnn-benchmark", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    import torch

    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    rows = []
    for text in args.variant or ["default"]:
        for mode in args.mode or ["sequential", "streams"]:
            row = run(
                str(Path(args.dataset).resolve()), args.folds, text, mode, args.epochs, "cuda"
            )
            row.update(device=torch.cuda.get_device_name(), cudnn_benchmark=args.cudnn_benchmark)
            rows.append(row)
            print(
                f"{text:<28} {mode:<10} f1 {row['mean']:.4f} ± {row['std']:.4f}  wall "
                f"{row['wall_s']:5.1f} s (train {row['train_s']:5.1f})  "
                f"{row['train_images_per_s']:7.0f} img/s  batch {row['batch_size']}"
                f"  cudnn.benchmark={args.cudnn_benchmark}",
                flush=True,
            )
            if args.out:
                Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
