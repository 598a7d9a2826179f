"""Test plugin: the first trial to start its second epoch (or second fold, ``race: folds``)
fails once; a study file lists this file under ``plugins:`` and every Ray trial imports it.

The fault injection lives here, in the tests, not in the installed trainable: importing the
plugin wraps ``CrossValidation.step``. The marker file in the study directory makes the failure
happen once across processes (``open(..., "x")`` succeeds for exactly one trial). Studies that
do not list this plugin are untouched, though the wrapper stays in the processes that imported it.
"""

from __future__ import annotations

from pathlib import Path

from cytotune.engine.search.crossval import CrossValidation

MARKER = "injected-failure"

_step = getattr(CrossValidation.step, "__wrapped__", CrossValidation.step)


def _step_that_fails_once(self):
    if not any(Path(p).name == Path(__file__).name for p in self.study.plugins):
        return _step(self)
    done = self.folds_done if self.study.budget.race == "folds" else self.epoch
    if done == 1:
        try:
            open(Path(self.study.study_dir) / MARKER, "x").close()
        except FileExistsError:  # failed once already (this trial or another)
            pass
        else:
            raise RuntimeError(f"injected failure after epoch {done} (tests/engine/plugins)")
    return _step(self)


_step_that_fails_once.__wrapped__ = _step
CrossValidation.step = _step_that_fails_once
