"""cytotune.engine.train.parallel: folds trained together give the folds trained one by one."""

from __future__ import annotations

import pytest
import torch
from cytotune.engine.data import CellDataset
from cytotune.engine.data.folds import make_folds
from cytotune.engine.train import FoldTrainer, TrainConfig, task_spec
from cytotune.engine.train.parallel import train_concurrently
from cytotune.search_spaces import ModelConfig


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """160 metastasis cells at 24 px and a 2-fold well split."""
    from cytotune.engine.synth import write_dataset

    path = tmp_path_factory.mktemp("parallel") / "metastasis"
    write_dataset("metastasis", path, 160, size=24, seed=0, progress=False)
    dataset = CellDataset(path)
    return dataset, make_folds(dataset, k=2, group="well")


def fold_trainers(data, family: str, model_args: dict, **train) -> list[FoldTrainer]:
    dataset, folds = data
    config = TrainConfig(epochs=3, batch_size=16, **train)
    model = ModelConfig(family, 3, task_spec(dataset.manifest), model_args)
    return [FoldTrainer(model, config, dataset, *folds.split(k), fold=k) for k in range(folds.k)]


CASES = {
    # augmentation and label smoothing draw per step; dropout draws from torch's generator
    "small_cnn with dropout": ("small_cnn", {"filters": 8, "dense_units": 16, "dropout": 0.3}, {}),
    "resnet with EMA": (
        "backbone",
        {"timm_kwargs": {"channels": [8, 8, 16, 16], "stem_width": 8}},
        {"ema": 0.9},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_concurrent_folds_equal_sequential_folds(data, case):
    family, model_args, train = CASES[case]
    one_by_one = fold_trainers(data, family, model_args, **train)
    for trainer in one_by_one:
        trainer.fit()
    together = fold_trainers(data, family, model_args, **train)
    train_concurrently(together)
    for a, b in zip(one_by_one, together):
        assert b.epoch == 3
        assert [r["loss"] for r in a.history] == [r["loss"] for r in b.history]
        for name, value in a.eval_model.state_dict().items():
            torch.testing.assert_close(b.eval_model.state_dict()[name], value, rtol=0, atol=0)
        assert (a.evaluate().outputs == b.evaluate().outputs).all()


def test_folds_of_different_sizes_each_reach_their_epochs(data):
    together = fold_trainers(data, "small_cnn", {"filters": 8, "dense_units": 16})
    together[0].fit(1)  # fold 0 is an epoch ahead: resumed trainers need not be in step
    train_concurrently(together)
    assert [t.epoch for t in together] == [3, 3]
    assert [len(t.history) for t in together] == [3, 3]
    assert [r["epoch"] for r in together[0].history] == [1, 2, 3]


def test_cross_validation_reports_folds_trained_together_like_folds_trained_alone(tmp_path):
    """budget.parallel_folds: after the first fold, the others train together and are
    reported one by one, each with the scores and learning curve of training them alone."""
    from cytotune.engine.data.folds import save_folds
    from cytotune.engine.search.crossval import CrossValidation
    from cytotune.engine.search.study import Budget, FoldsSpec, StudyConfig
    from cytotune.engine.synth import write_dataset

    write_dataset("metastasis", tmp_path / "d", 120, size=16, seed=0, progress=False)
    save_folds(tmp_path / "d", make_folds(tmp_path / "d", k=3, group="well", name="k3"))
    sample = {"family": "small_cnn", "small_cnn": {"filters": 8, "dense_units": 8}, "train": {}}
    runs = {}
    for parallel in (1, 2):
        study = StudyConfig(
            name="together",
            dataset=str(tmp_path / "d"),
            folds=FoldsSpec(name="k3", k=3),
            budget=Budget(max_epochs=3, parallel_folds=parallel),
            train={"loader": "inprocess", "batch_size": 16},
        )
        cv = CrossValidation(study, sample)
        reports = []
        while not cv.finished:
            reports.append(cv.step()[0])
        runs[parallel] = reports
    assert [r["folds_done"] for r in runs[2]] == [1, 2, 3]
    for alone, together in zip(runs[1], runs[2]):
        assert together["fold"] == alone["fold"]
        assert together["val/f1_weighted"] == alone["val/f1_weighted"]
        assert together["fold_curve"] == alone["fold_curve"]
        assert together["train_loss"] == alone["train_loss"]


def test_auto_parallel_folds_is_one_on_the_cpu(tmp_path):
    from cytotune.engine.data.folds import save_folds
    from cytotune.engine.search.crossval import CrossValidation
    from cytotune.engine.search.study import Budget, FoldsSpec, StudyConfig
    from cytotune.engine.synth import write_dataset

    write_dataset("metastasis", tmp_path / "d", 60, size=16, seed=0, progress=False)
    save_folds(tmp_path / "d", make_folds(tmp_path / "d", k=3, group="well", name="k3"))
    sample = {"family": "small_cnn", "small_cnn": {"filters": 8, "dense_units": 8}, "train": {}}
    study = StudyConfig(
        name="auto",
        dataset=str(tmp_path / "d"),
        folds=FoldsSpec(name="k3", k=3),
        budget=Budget(max_epochs=1),
        train={"loader": "inprocess", "batch_size": 16},
    )
    cv = CrossValidation(study, sample)
    cv.step()
    assert cv.parallel_folds(cv.trainers[0]) == 1
    pinned = StudyConfig(**{**study.__dict__, "budget": Budget(max_epochs=1, parallel_folds=3)})
    assert CrossValidation(pinned, sample).parallel_folds(cv.trainers[0]) == 3
