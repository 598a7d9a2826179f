"""Real study directories built without Ray, shared by the tests of the packages that read
studies (export, explain): each trial is a ``CrossValidation`` of a tiny model, saved and
recorded in the results store through the search's own recorder
(:class:`cytotune.engine.search.recorder.StudyRecorder`, which the Tune callback drives)."""

from __future__ import annotations

from pathlib import Path

from cytotune.engine.data import CellDataset
from cytotune.engine.data.folds import make_folds, save_folds
from cytotune.engine.search.crossval import CrossValidation
from cytotune.engine.search.recorder import StudyRecorder
from cytotune.engine.search.store import StudyStore
from cytotune.engine.search.study import Budget, FoldsSpec, Objective, StudyConfig

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


def make_study(
    root: Path,
    dataset: Path,
    trials: dict[str, dict],
    metric: str,
    folds_name: str,
    k: int = 2,
    epochs: int = 1,
) -> Path:
    """Run each ``trial_id -> sample`` for ``epochs`` on every fold and record it."""
    study = StudyConfig(
        name="export-test",
        dataset=str(dataset),
        folds=FoldsSpec(name=folds_name, k=k),
        budget=Budget(trials=len(trials), max_epochs=epochs, grace_epochs=1),
        objectives=(Objective(metric),),
        train={"loader": "inprocess", "augment": "none", "tta": "none"},
        storage=str(root),
    )
    store = StudyStore(study.study_dir)
    recorder = StudyRecorder.for_study(store, study, flush_every_s=float("inf"))
    folds = None
    for trial_id, config in trials.items():
        recorder.started(trial_id, config)
        cv = CrossValidation(study, config)
        folds = cv.folds
        while not cv.finished:  # every fold to the end, in the study's race order
            report, details = cv.step()
            recorder.reported(trial_id, report)
        checkpoint = Path(store.tune_dir) / f"trial_{trial_id}" / f"checkpoint_{epochs - 1:06d}"
        cv.save(checkpoint, details)
        recorder.completed(trial_id, report, str(checkpoint), details)
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


def regression_dataset(path: Path, n: int = 64, seed: int = 1) -> Path:
    """Two regression targets (mean vimentin / 1000, cell area share) of synthetic cells, with
    masks and 2 random folds named ``k2``."""
    from cytotune.engine.data import DatasetSpec, DatasetWriter
    from cytotune.engine.synth import render

    cells = render("metastasis", n, size=SIZE, seed=seed)
    spec = DatasetSpec(("dna", "actin", "vimentin"), "uint16", (3, SIZE, SIZE), "regression",
                       targets=("vimentin", "area"))  # fmt: skip
    with DatasetWriter(path, spec) as writer:
        for i, (image, mask) in enumerate(zip(cells.images, cells.masks)):
            targets = {"vimentin": float(image[2][mask > 0].mean() / 1000), "area": mask.mean()}
            writer.add(f"c{i}", image, targets={k: float(v) for k, v in targets.items()}, mask=mask)
    save_folds(path, make_folds(path, k=2, group=None, stratify=None, name="k2"))
    return path
