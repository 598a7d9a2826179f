"""A result for a trial Optuna already finished (driver killed before Tune's checkpoint) is dropped."""

from __future__ import annotations

import optuna
import pytest
from cytotune.engine.search.resumable import ResumableOptunaSearch
from ray.tune.search.optuna import OptunaSearch


def _space(trial):
    trial.suggest_float("x", 0.0, 1.0)


@pytest.mark.parametrize("cls, raises", [(OptunaSearch, True), (ResumableOptunaSearch, False)])
def test_results_for_trials_finished_in_optuna(cls, raises):
    searcher = cls(space=_space, metric="loss", mode="min", seed=0)
    assert searcher.suggest("t1") is not None
    ot_trial = searcher._ot_trials["t1"]
    searcher._ot_study.tell(ot_trial, 0.5)  # finished in Optuna, Tune still thinks it runs
    result = {"loss": 0.4, "training_iteration": 2}
    if raises:  # the failure ResumableOptunaSearch exists for
        with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
            searcher.on_trial_result("t1", result)
        return
    searcher.on_trial_result("t1", result)
    searcher.on_trial_complete("t1", result)  # no second tell either
    assert searcher._ot_study.trials[0].value == 0.5


def test_store_completes_a_trial_whose_results_the_killed_driver_never_flushed(tmp_path):
    from types import SimpleNamespace

    from cytotune.engine.search.callbacks import StoreCallback
    from cytotune.engine.search.store import StudyStore
    from cytotune.engine.search.study import StudyConfig

    study = StudyConfig.from_dict(
        {
            "dataset": str(tmp_path / "data"),
            "space": ["demo"],
            "budget": {"max_epochs": 3, "race": "epochs"},
        }
    )
    store = StudyStore(str(tmp_path / "study"))
    # the row as a killed driver left it: started, no result flushed (NaN after a Parquet round trip)
    store.upsert(
        "trials", ("t1",), {"trial_id": "t1", "status": "running", "epochs_done": float("nan")}
    )
    trial = SimpleNamespace(
        trial_id="t1", checkpoint=None, last_result={"epoch": 3, "val/f1_weighted": 0.8}
    )
    StoreCallback(store, study).on_trial_complete(0, [], trial)
    row = store.rows("trials")[0]
    assert row["status"] == "completed"
    assert row["epochs_done"] == 3
    assert row["val/f1_weighted"] == 0.8
    # race: folds: complete only with every fold scored, whatever the epochs
    folds_study = StudyConfig.from_dict(
        {"dataset": str(tmp_path / "data"), "space": ["demo"], "folds": {"k": 3}}
    )
    for done, status in ((3, "completed"), (2, "pruned")):
        key = (f"f{done}",)
        store.upsert("trials", key, {"trial_id": key[0], "status": "running"})
        trial = SimpleNamespace(
            trial_id=key[0], checkpoint=None, last_result={"epoch": 10, "folds_done": done}
        )
        StoreCallback(store, folds_study).on_trial_complete(0, [], trial)
        row = next(r for r in store.rows("trials") if r["trial_id"] == key[0])
        assert (row["status"], row["folds_done"]) == (status, done)
