"""A real study directory built without Ray: each trial is a ``CrossValidation`` of a tiny model
(one epoch per fold, as a Tune trial runs it), saved and recorded in the results store exactly
as the search's store callback does (trials.parquet, folds.parquet, study.json, tune/...)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.data import CellDataset
from engine.data.folds import make_folds, save_folds
from engine.search.crossval import CrossValidation
from engine.search.store import StudyStore
from engine.search.study import Budget, FoldsSpec, Objective, StudyConfig
from search_spaces import list_models

TINY_TIMM = {"channels": [8, 8, 16, 16], "stem_width": 8}
TINY = {
    "small_cnn": {"filters": 8, "dense_units": 16, "conv_layers": 2},
    "backbone": {"timm_kwargs": TINY_TIMM},
    "channel_attention": {"timm_kwargs": TINY_TIMM, "embed_dim": 8, "mlp": [16]},
    "mhl_attention": {"timm_kwargs": TINY_TIMM, "embed_dim": 8, "mlp": [16]},
    "protopnet": {
        "timm_kwargs": TINY_TIMM,
        "prototypes_per_class": 2,
        "prototype_dim": 8,
        "warmup_epochs": 0,
        "push_start": 100,
        "last_layer_epochs": 1,
    },
}
SIZE = 32


def sample(family: str, lr: float = 3e-3) -> dict:
    return {"family": family, family: dict(TINY[family]), "train": {"lr": lr, "batch_size": 32}}


def _cell(value):
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return value


def make_study(
    root: Path, dataset: Path, trials: dict[str, dict], metric: str, folds_name: str
) -> Path:
    """Run each ``trial_id -> sample`` for one epoch on every fold and record it."""
    study = StudyConfig(
        name="export-test",
        dataset=str(dataset),
        folds=FoldsSpec(name=folds_name, k=2),
        budget=Budget(trials=len(trials), max_epochs=1, grace_epochs=1),
        objectives=(Objective(metric),),
        train={"loader": "inprocess", "augment": "none"},
        storage=str(root),
    )
    store = StudyStore(study.study_dir)
    folds = None
    for number, (trial_id, config) in enumerate(trials.items()):
        cv = CrossValidation(study, config)
        folds = cv.folds
        report, details = cv.run_epoch()
        checkpoint = Path(store.tune_dir) / f"trial_{trial_id}" / "checkpoint_000000"
        cv.save(checkpoint, details)
        store.upsert(
            "trials",
            (trial_id,),
            {
                "trial_id": trial_id,
                "number": number,
                "status": "completed",
                "family": config["family"],
                "params": json.dumps(config),
                "epochs_done": 1,
                **{k: v for k, v in report.items() if k.startswith("val/")},
                "checkpoint": str(checkpoint),
            },
        )
        for detail in details:
            store.upsert(
                "folds",
                (trial_id, detail["fold"]),
                {"trial_id": trial_id, **{k: _cell(v) for k, v in detail.items()}},
            )
    store.create(
        study.to_yaml(),
        {
            "name": study.name,
            "dataset": study.dataset,
            "dataset_hash": CellDataset(dataset).manifest.content_hash,
            "folds": folds.name,
            "fold_hash": folds.hash,
            "space": {"name": "test"},
            "objectives": [o.__dict__ for o in study.objectives],
        },
    )
    store.flush()
    return Path(store.path)


@pytest.fixture(scope="session")
def cls_dataset(tmp_path_factory) -> Path:
    """160 metastasis cells at 32 px with masks, 2 folds grouped by well."""
    from engine.synth import write_dataset

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
    from engine.data import DatasetSpec, DatasetWriter
    from engine.synth import render

    root = tmp_path_factory.mktemp("regression")
    cells = render("metastasis", 64, size=SIZE, seed=1)
    spec = DatasetSpec(("dna", "actin", "vimentin"), "uint16", (3, SIZE, SIZE), "regression",
                       targets=("vimentin", "area"))  # fmt: skip
    with DatasetWriter(root / "reg", spec) as writer:
        for i, (image, mask) in enumerate(zip(cells.images, cells.masks)):
            targets = {"vimentin": float(image[2][mask > 0].mean() / 1000), "area": mask.mean()}
            writer.add(f"c{i}", image, targets={k: float(v) for k, v in targets.items()}, mask=mask)
    save_folds(root / "reg", make_folds(root / "reg", k=2, group=None, stratify=None, name="k2"))
    return make_study(root / "studies", root / "reg", {"reg": sample("small_cnn")}, "r2", "k2")


def reference_outputs(fold_dirs, pixels: np.ndarray, mask=None) -> np.ndarray:
    """Independent reference: every fold model rebuilt by the engine, fed the checkpoint's own
    normalisation, softmax per model (classification), then the plain mean over models."""
    import torch

    from engine.train import load_model

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
