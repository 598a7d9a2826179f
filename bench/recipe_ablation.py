"""The training recipe, one change at a time: K-fold scores and GPU time of the default
configuration (the search's trial 0) and of variants of it, trained by cytotune's own trainer
without Ray, one fold after another on one device.

    python bench/recipe_ablation.py data/mitocheck --folds k5-group \\
        --variant default --variant ema=0.998 --variant "epochs=30;tta=none" --out /tmp/ablation.json

A variant is ``name=value[;name=value...]`` (values in YAML) of TrainConfig fields (``epochs`` too) or of the
backbone family (``backbone.backbone=resnet10t``); ``default`` is the space's default trial.
Prints weighted F1 mean ± std over folds, wall seconds and training images/s per variant.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import yaml


def parse_variant(text: str) -> tuple[dict, dict, int | None]:
    """``"lr=1e-3;backbone.backbone=resnet10t"`` -> (train overrides, family overrides, epochs)."""
    train, family, epochs = {}, {}, None
    if text == "default":
        return train, family, epochs
    for part in text.split(";"):
        key, value = part.split("=", 1)
        value = yaml.safe_load(value)
        if isinstance(value, str):  # YAML 1.1 reads "4e-3" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if key == "epochs":
            epochs = int(value)
        elif key.startswith("backbone."):
            family[key.split(".", 1)[1]] = value
        else:
            train[key] = value
    return train, family, epochs


def variant_cv(dataset: str, folds: str, k: int, group: str, text: str, epochs: int, device: str):
    """The search's CrossValidation of the default trial changed by variant ``text``."""
    from cytotune.engine.search.crossval import CrossValidation
    from cytotune.engine.search.study import Budget, FoldsSpec, StudyConfig
    from cytotune.search_spaces import load_space

    train, family, variant_epochs = parse_variant(text)
    sample = load_space("default").default()
    sample["backbone"] = {**sample["backbone"], **family}
    sample["train"] = {**sample["train"], **train}
    seed = int(train.pop("seed", 0))  # the study's seed is the one the trainer uses
    study = StudyConfig(
        name="ablation",
        seed=seed,
        dataset=dataset,
        folds=FoldsSpec(name=folds, k=k, group=group),
        budget=Budget(trials=1, max_epochs=variant_epochs or epochs),
        loader="inprocess",
    )
    return CrossValidation(study, sample, device=device)


def run_variant(dataset: str, folds: str, k: int, group: str, text: str, epochs: int, device: str):
    start = time.perf_counter()
    cv = variant_cv(dataset, folds, k, group, text, epochs, device)
    rates = []
    while not cv.finished:
        report, details = cv.step()
        rates.append(report["images_per_s"])
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    scores = [d["f1_weighted"] for d in details]
    return {
        "variant": text,
        "f1_weighted": scores,
        "mean": float(np.mean(scores)),
        "std": float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0,
        "wall_s": wall,
        "train_images_per_s": float(np.mean(rates)),
        "batch_size": cv.trainers[0].config.batch_size,
        "lr": cv.trainers[0].config.lr,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", help="cytotune dataset directory")
    parser.add_argument("--folds", default="k5-group", help="fold set name (default k5-group)")
    parser.add_argument("--k", type=int, default=5, help="folds in the set (default 5)")
    parser.add_argument("--group", default="group", help="fold group column (default group)")
    parser.add_argument("--epochs", type=int, default=40, help="epochs (default 40)")
    parser.add_argument("--variant", action="append", default=None, help="see the docstring")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    parser.add_argument("--out", default=None, help="JSON file for the rows")
    args = parser.parse_args()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for text in args.variant or ["default"]:
        row = run_variant(
            str(Path(args.dataset).resolve()),
            args.folds,
            args.k,
            args.group,
            text,
            args.epochs,
            device,
        )
        row["device"] = torch.cuda.get_device_name() if device == "cuda" else "cpu"
        rows.append(row)
        print(
            f"{text:<40} f1_weighted {row['mean']:.4f} ± {row['std']:.4f}  {row['wall_s']:6.1f} s  "
            f"{row['train_images_per_s']:8.0f} img/s  batch {row['batch_size']} lr {row['lr']:.2e}",
            flush=True,
        )
        if args.out:
            Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
