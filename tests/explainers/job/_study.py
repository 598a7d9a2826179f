"""The explain tests' study: synthetic cells, 3 folds by well, one trained trial per family."""

from __future__ import annotations

from pathlib import Path

from cytotune.engine.data.folds import make_folds, save_folds
from cytotune.engine.synth import write_dataset

from tests.studies import make_study as record_study

SAMPLES = {
    "small_cnn": {
        "family": "small_cnn",
        "small_cnn": {"conv_layers": 3, "filters": 16, "kernel_size": 3, "dense_units": 32},
        "train": {"lr": 3e-3, "batch_size": 32},
    },
    "mhl_attention": {
        "family": "mhl_attention",
        "mhl_attention": {
            "backbone": "resnet10t",
            "timm_kwargs": {"channels": [8, 16, 32, 64], "stem_width": 8},
            "heads": 2,
            "embed_dim": 16,
            "mlp": [32],
        },
        "train": {"lr": 3e-3, "batch_size": 32},
    },
    "protopnet": {
        "family": "protopnet",
        "protopnet": {
            "backbone": "resnet10t",
            "timm_kwargs": {"channels": [8, 16, 32, 64], "stem_width": 8},
            "prototypes_per_class": 2,
            "prototype_dim": 16,
            "feature_stage": 2,
        },
        "train": {"lr": 3e-3, "batch_size": 32},
    },
}


def make_study(
    root: Path,
    families=("small_cnn", "mhl_attention"),
    n: int = 180,
    size: int = 32,
    epochs: int = 2,
    task: str = "metastasis",
) -> Path:
    """Dataset + 3 folds by well + one trained trial per family (trial id = family name)."""
    data = root / "dataset"
    write_dataset(task, data, n=n, size=size, seed=3, progress=False)
    save_folds(data, make_folds(data, k=3, group="well", stratify="label", name="k3-well"))
    trials = {family: SAMPLES[family] for family in families}
    return record_study(
        root / "studies", data, trials, "f1_weighted", "k3-well", k=3, epochs=epochs
    )


def by_family(plan, family: str):
    """The planned trial of one family (the ranking among them depends on training)."""
    return next(t for t in plan.trials if t.family == family)
