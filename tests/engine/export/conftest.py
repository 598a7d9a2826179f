"""A real study directory built without Ray: each trial is a ``CrossValidation`` of a tiny model
(one epoch per fold, as a Tune trial runs it), saved and recorded in the results store exactly
as the search's store callback does (trials.parquet, folds.parquet, study.json, tune/...)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cytotune.engine.data import CellDataset
from cytotune.engine.data.folds import make_folds, save_folds
from cytotune.search_spaces.models import list_models

from tests.studies import SIZE, TINY, make_study, regression_dataset, sample  # noqa: F401


@pytest.fixture(scope="session")
def cls_dataset(tmp_path_factory) -> Path:
    """160 metastasis cells at 32 px with masks, 2 folds grouped by well."""
    from cytotune.engine.synth import write_dataset

    path = tmp_path_factory.mktemp("export") / "cells"
    write_dataset("metastasis", path, 160, size=SIZE, seed=0, progress=False)
    save_folds(path, make_folds(path, k=2, group="well", name="k2-well"))
    return path


@pytest.fixture(scope="session")
def cls_study(cls_dataset, tmp_path_factory) -> Path:
    """One trial per registered family (trial id = family name)."""
    root = tmp_path_factory.mktemp("studies")
    trials = {family: sample(family) for family in list_models()}
    return make_study(root, cls_dataset, trials, "balanced_accuracy", "k2-well")


@pytest.fixture(scope="session")
def reg_study(tmp_path_factory) -> Path:
    """A two-target regression study with one small_cnn trial."""
    root = tmp_path_factory.mktemp("regression")
    dataset = regression_dataset(root / "reg")
    return make_study(root / "studies", dataset, {"reg": sample("small_cnn")}, "r2", "k2")


def reference_outputs(fold_dirs, pixels: np.ndarray, mask=None) -> np.ndarray:
    """Independent reference: every fold model rebuilt by the engine, fed the checkpoint's own
    normalisation, softmax per model (classification), then the plain mean over models."""
    import torch
    from cytotune.engine.train import load_model

    outs = []
    for directory in fold_dirs:
        model, config = load_model(directory)
        norm = config["data"]["normalization"]
        offset = np.asarray(norm["offset"], np.float32)[None, :, None, None]
        scale = np.asarray(norm["scale"], np.float32)[None, :, None, None]
        x = torch.from_numpy(((pixels - offset) / scale).astype(np.float32))
        with torch.no_grad():
            out = model(x) if mask is None else model(x, mask=torch.from_numpy(mask))
        if config["data"]["task"] == "classification":
            out = torch.softmax(out, dim=1)
        outs.append(out.numpy())
    return np.mean(outs, axis=0)


def trial_folds(study: Path, trial_id: str) -> list[Path]:
    base = study / "tune" / f"trial_{trial_id}" / "checkpoint_000000"
    return sorted(base.glob("fold_*"))


def raw_crops(dataset: Path, n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    ds = CellDataset(dataset)
    rows = np.arange(n) * 7 % len(ds)
    return ds.images(rows), ds.masks()[rows][:, None].astype(np.float32)
