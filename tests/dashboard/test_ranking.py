"""One ranking (issue 17): with tied scores the dashboard's rank 1 and ``cytotune pull --rank 1``
are the same trial, the one that started first, whatever order the table's rows are in."""

from __future__ import annotations

from pathlib import Path

from cytotune.dashboard.data import Study
from cytotune.engine.export.source import select_trial
from cytotune.engine.search.leaderboard import ranked
from cytotune.engine.search.recorder import StudyRecorder
from cytotune.engine.search.store import StudyStore


def _tied_study(root: Path) -> Path:
    """Four trials through the search's recorder: "late" and "early" tie on the objective, the
    finished "early" one started first; "raced" scores higher but was pruned after one fold."""
    study = root / "tied"
    store = StudyStore(str(study))
    store.create(
        "name: tied\ndataset: /nowhere\nfolds: {k: 2}\nobjectives:\n- {metric: f1_macro, mode: max}\n",
        {"name": "tied", "objectives": [{"metric": "f1_macro", "mode": "max"}]},
    )
    recorder = StudyRecorder(store, k=2, max_epochs=1, race="folds", flush_every_s=float("inf"))
    sample = {"family": "small_cnn", "small_cnn": {"filters": 8}, "train": {"lr": 1e-3}}
    for trial_id, score, folds in (
        ("zz-early", 0.8, 2),
        ("aa-late", 0.8, 2),
        ("raced", 0.95, 1),
        ("worse", 0.7, 2),
    ):
        recorder.started(trial_id, sample)
        for fold in range(folds):
            curve = [{"epoch": 1, "f1_macro": score}]
            report = {"epoch": 1, "fold": fold, "folds_done": fold + 1, "fold_curve": curve}
            recorder.reported(trial_id, {**report, "val/f1_macro": score})
        checkpoint = study / "tune" / f"trial_{trial_id}" / "checkpoint_000000"
        (checkpoint / "fold_0").mkdir(parents=True)
        details = [{"fold": f, "f1_macro": score} for f in range(folds)]
        recorder.completed(trial_id, checkpoint=str(checkpoint), fold_details=details)
    return study


def test_tied_scores_rank_the_same_in_the_dashboard_and_pull(tmp_path):
    study = _tied_study(tmp_path)
    trials = Study("tied", study).trials()
    shown = trials.sort_values("rank")[["trial_id", "rank"]]
    assert shown["trial_id"].tolist() == ["zz-early", "aa-late", "worse", "raced"]
    assert select_trial(study, rank=1).trial_id == "zz-early"
    for rank, trial_id in zip(shown["rank"], shown["trial_id"]):
        assert select_trial(study, rank=int(rank)).trial_id == trial_id
    # the table's row order does not decide ties
    table = StudyStore(str(study)).table("trials")
    backwards = ranked(table.iloc[::-1], "val/f1_macro", "max")["trial_id"].tolist()
    assert backwards == shown["trial_id"].tolist()
