"""Biology or batch? Baselines that cannot see morphology, and where the attributions fall.

For a dataset whose classes may be confounded with acquisition batches (BBBC021: every DMSO cell
comes from well B02), this fits scikit-learn logistic regressions on features that carry no cell
morphology, under the study's grouped folds and under naive per-cell folds:

- ``intensity``: per-channel mean, std and 99th percentile of the whole crop;
- ``border``: per-channel mean and std of the crop's outer ring (mostly background: illumination,
  camera offset, medium), the purest batch signal.

If these match the CNN, the classes are separable without biology. It then measures where the
best trial's attribution maps put their mass: the share on the cell foreground (Otsu threshold of
the channel sum) against the share of the crop the foreground covers, per class. Mass well above
the area share means the model looks at the cell, not the background.

    python bench/real/batch_audit.py --study runs/real-cpu/bbbc021 --folds k5-group k5-cell
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from cytotune.engine.data import CellDataset
from cytotune.engine.data.folds import load_folds
from cytotune.engine.export.source import select_trial
from cytotune.explainers.job import layout
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def intensity_features(images: np.ndarray) -> np.ndarray:
    flat = images.reshape(len(images), images.shape[1], -1).astype(np.float64)
    return np.concatenate([flat.mean(-1), flat.std(-1), np.percentile(flat, 99, axis=-1)], axis=1)


def border_features(images: np.ndarray, width: int = 4) -> np.ndarray:
    ring = np.ones(images.shape[-2:], bool)
    ring[width:-width, width:-width] = False
    pixels = images[:, :, ring].astype(np.float64)
    return np.concatenate([pixels.mean(-1), pixels.std(-1)], axis=1)


def cross_validated_f1(features, labels, ids, folds) -> tuple[float, float]:
    scores = []
    for k in range(folds.k):
        _train, val = folds.split(k)
        is_val = np.isin(ids, val)
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        model.fit(features[~is_val], labels[~is_val])
        scores.append(f1_score(labels[is_val], model.predict(features[is_val]), average="weighted"))
    return float(np.mean(scores)), float(np.std(scores))


def otsu(values: np.ndarray, bins: int = 256) -> float:
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(hist)
    weight1 = weight0[-1] - weight0
    mean0 = np.cumsum(hist * centres) / np.maximum(weight0, 1)
    total = (hist * centres).sum()
    mean1 = (total - np.cumsum(hist * centres)) / np.maximum(weight1, 1)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(centres[np.argmax(between)])


def attribution_location(study: Path, dataset: CellDataset, images, ids, labels, names, method):
    """Per class: mean share of attribution mass on the foreground vs its area share."""
    source = select_trial(study)
    path = layout.maps_path(study, source.trial_id, method)
    if not path.exists():
        return None
    table = layout.read_maps(path, ["cell_id", "map", "map_shape"]).to_pandas()
    index = {c: i for i, c in enumerate(ids)}
    rows = {}
    for cls in np.unique(labels):
        mass, area = [], []
        for cell, blob, shape in table[["cell_id", "map", "map_shape"]].itertuples(index=False):
            i = index.get(cell)
            if i is None or labels[i] != cls:
                continue
            heat = np.clip(layout.decode_map(blob, shape).astype(np.float64), 0, None)
            heat = heat.reshape(heat.shape[-2:]) if heat.ndim > 2 else heat
            image = images[i].astype(np.float64).sum(0)
            foreground = image > otsu(image)
            if heat.sum() <= 0 or heat.shape != foreground.shape:
                continue
            mass.append(heat[foreground].sum() / heat.sum())
            area.append(foreground.mean())
        rows[names[cls]] = {
            "cells": len(mass),
            "foreground_mass_share": float(np.mean(mass)) if mass else None,
            "foreground_area_share": float(np.mean(area)) if area else None,
        }
    return {"trial_id": source.trial_id, "method": method, "classes": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study", type=Path, required=True)
    parser.add_argument("--folds", nargs="+", default=["k5-group", "k5-cell"])
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from cytotune.engine.search.study import StudyConfig

    config = StudyConfig.from_yaml(args.study / "study.yaml")
    dataset = CellDataset(config.dataset)
    meta = dataset.metadata()
    images = dataset.images()
    ids = meta["cell_id"].to_numpy()
    label_map = dataset.manifest.label_map
    labels = meta["label"].map(label_map).to_numpy()
    names = {v: k for k, v in label_map.items()}
    result = {"baselines": {}}
    for kind, features in (
        ("intensity", intensity_features(images)),
        ("border", border_features(images)),
    ):
        for fold_name in args.folds:
            mean, std = cross_validated_f1(
                features, labels, ids, load_folds(dataset.path, fold_name)
            )
            result["baselines"][f"{kind}/{fold_name}"] = {"f1_weighted": mean, "std": std}
    result["attribution_location"] = attribution_location(
        args.study, dataset, images, ids, labels, names, args.method
    )
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
