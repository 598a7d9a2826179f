"""The search's live table: says what happens before the first score, never ``best None``."""

from __future__ import annotations

import io
from types import SimpleNamespace

from cytotune.engine.search.callbacks import LiveTable, _fit


def study(race: str = "folds"):
    return SimpleNamespace(
        objectives=[SimpleNamespace(metric="balanced_accuracy", key="val/balanced_accuracy", mode="max")],
        folds=SimpleNamespace(k=3),
        budget=SimpleNamespace(race=race, max_epochs=4),
        resources=SimpleNamespace(cpus=1, gpus=0),
    )  # fmt: skip


def trial(trial_id: str, lr: float = 3e-3):
    config = {
        "family": "small_cnn",
        "small_cnn": {"conv_layers": 3, "filters": 16},
        "train": {"lr": lr},
    }
    return SimpleNamespace(trial_id=trial_id, config=config)  # fmt: skip


def test_setup_says_trials_are_launching_and_no_best_none_before_a_score():
    out = io.StringIO()
    table = LiveTable(study(), stream=out)
    table.setup(total_num_samples=6)
    table.on_trial_start(0, [], trial("a"))
    text = out.getvalue()
    assert "launching 6 trials" in text
    assert "None" not in text
    assert "no score yet" in text
    table.on_trial_result(0, [], trial("a"), {"epoch": 4, "folds_done": 1, "fold_curve": [],
                                              "val/balanced_accuracy": 0.81234})  # fmt: skip
    last = out.getvalue().splitlines()[-1]
    assert "1/3 folds" in last
    assert last.endswith("best 0.8123")


def test_epoch_race_waits_for_the_first_epoch():
    out = io.StringIO()
    table = LiveTable(study("epochs"), stream=out)
    table.on_trial_start(0, [], trial("a"))
    assert "first epoch" in out.getvalue()
    assert "None" not in out.getvalue()


def test_long_parameters_are_cut_at_a_word_with_an_ellipsis():
    assert _fit("conv_layers=3 filters=16 kernel_size=3 lr=3.0e-03", 40) == (
        "conv_layers=3 filters=16 kernel_size=3…"
    )
    assert _fit("short", 40) == "short"
