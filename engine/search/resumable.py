"""OptunaSearch that survives a driver killed between Optuna's write and Tune's checkpoint and
stops proposing trials the time budget cannot pay for."""

from __future__ import annotations

import logging

import optuna
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from .deadline import DEADLINE

logger = logging.getLogger(__name__)


class ResumableOptunaSearch(OptunaSearch):
    """Ignores results for trials the Optuna storage already holds as finished.

    The study's Optuna storage (optuna.db) is written at once, Tune's experiment state only
    every few seconds. A driver killed in between leaves a trial finished in Optuna but
    running in Tune; on ``--resume`` Tune continues it from its checkpoint and reports results
    Optuna refuses (``UpdateFinishedTrialError``), which would end the whole search. Optuna
    already has that trial's final value, so the late results are dropped; the results store
    still records the continued trial.

    Once the time left is shorter than the quickest first result of a trial (``DEADLINE``),
    it proposes no more trials; the running ones go on until the budget ends.
    """

    def suggest(self, trial_id: str):
        if DEADLINE.too_late():
            logger.info("no new trial: the time budget ends before one could report")
            return Searcher.FINISHED
        return super().suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        DEADLINE.record(trial_id, result)
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            logger.info("trial %s is already finished in Optuna; result not re-reported", trial_id)
            self._completed_trials.add(trial_id)
