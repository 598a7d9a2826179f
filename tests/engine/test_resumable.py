"""A result for a trial Optuna already finished (driver killed before Tune's checkpoint) is dropped."""

from __future__ import annotations

import optuna
import pytest
from ray.tune.search.optuna import OptunaSearch

from engine.search.resumable import ResumableOptunaSearch


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
