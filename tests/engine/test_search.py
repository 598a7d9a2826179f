"""Search: study validation, a smoke study on CPU, injected failure retried, kill + resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from cytotune.engine.search import StudyConfig, StudyError, StudyStore

FAIL_ONCE_PLUGIN = Path(__file__).parent / "plugins" / "fail_once.py"

TINY_SPACE = {
    "name": "tiny",
    "default_family": "small_cnn",
    "families": {
        "small_cnn": {
            "conv_layers": {"type": "int", "low": 1, "high": 2, "default": 2},
            "filters": {"type": "categorical", "choices": [4, 8], "default": 8},
            "dense_units": 16,
            "dense_layers": 1,
            "dropout": 0.0,
        },
        "backbone": {
            "backbone": "resnet10t",
            "timm_kwargs": {"type": "fixed", "value": {"channels": [4, 8, 8, 16], "stem_width": 4}},
        },
    },
    "train": {
        "lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True, "default": 3e-3},
        "batch_size": 32,
    },
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from cytotune.engine.synth import write_dataset

    root = tmp_path_factory.mktemp("search")
    write_dataset("metastasis", root / "dataset", n=160, size=32, seed=0, progress=False)
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY_SPACE))
    return root


def _study_file(root: Path, name: str, **overrides) -> Path:
    data = {
        "name": name,
        "dataset": "dataset",
        "folds": {"k": 2, "group": "well"},
        "space": "tiny.yaml",
        "budget": {"trials": 3, "max_epochs": 2, "grace_epochs": 1},
        "resources": {"cpus": 1},
        "objective": {"metric": "balanced_accuracy"},
        "train": {"loader": "inprocess"},
        "storage": "studies",
        "well_column": "well",
        "max_failures": 2,
        **overrides,
    }
    if "objectives" in overrides:
        del data["objective"]
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        ({"budget": {"trials": 0}}, "budget.trials"),
        ({"budget": {"grace_epochs": 9, "max_epochs": 2}}, "budget.grace_epochs"),
        ({"objective": {"metric": "f1_wrong"}}, "objective.metric"),
        ({"sampler": "grid"}, "sampler"),
        ({"space": "nowhere.yaml"}, "space"),
        ({"resources": {"gpus": 1.5}}, "resources.gpus"),
        ({"budgett": {}}, "budgett"),
        ({"train": {"optimizer": "sgdx"}}, "train: .*optimizer"),
        ({"train": {"epoch": 3}}, "train: unknown training setting"),
        (
            {"objectives": [{"metric": "accuracy"}, {"metric": "log_loss"}]},
            "ASHA prunes on one metric",
        ),
    ],
)
def test_invalid_study_files_fail_before_anything_starts(workspace, change, message):
    with pytest.raises(StudyError, match=message):
        StudyConfig.from_yaml(_study_file(workspace, "bad", **change))


def test_dataset_path_relative_to_the_working_directory_is_explained(workspace, monkeypatch):
    """A study file in a sub-folder naming a dataset relative to the shell's directory."""
    sub = workspace / "configs"
    sub.mkdir(exist_ok=True)
    path = sub / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "dataset": "dataset", "space": "default"}))
    monkeypatch.chdir(workspace)
    with pytest.raises(StudyError, match=r"resolve against the file's folder.*write \.\./dataset"):
        StudyConfig.from_yaml(path)
    path.write_text(yaml.safe_dump({"name": "x", "dataset": "../dataset", "space": "default"}))
    # a relative study-file path ends absolute: trials run in their own working directories
    relative_path = Path(os.path.relpath(path, workspace))
    dataset = Path(StudyConfig.from_yaml(relative_path).dataset)
    assert dataset.is_absolute()
    assert dataset.resolve() == (workspace / "dataset").resolve()


def test_study_file_round_trip(workspace):
    study = StudyConfig.from_yaml(_study_file(workspace, "rt"))
    assert study.objectives[0].mode == "max"
    assert study.folds.resolved_name == "k2-well"
    assert StudyConfig.from_dict(yaml.safe_load(study.to_yaml())) == study


def test_smoke_study_writes_a_complete_store(workspace, ray_local):
    from cytotune.engine.data import CellDataset
    from cytotune.engine.data.folds import load_folds
    from cytotune.engine.search.runner import run_search
    from cytotune.engine.train import load_model
    from sklearn.metrics import balanced_accuracy_score

    study = StudyConfig.from_yaml(_study_file(workspace, "smoke"))
    store = run_search(study, verbose=False)
    trials, folds, epochs = store.table("trials"), store.table("folds"), store.table("epochs")
    assert len(trials) == 3
    assert set(trials["status"]) <= {"completed", "pruned"}
    first = trials.sort_values("number").iloc[0]
    assert json.loads(first["params"])["small_cnn"] == {
        "conv_layers": 2,
        "filters": 8,
        "dense_units": 16,
        "dense_layers": 1,
        "dropout": 0.0,
    }
    assert (Path(store.path) / "optuna.db").is_file()
    assert store.status()["status"] == "finished"
    completed = trials[trials["status"] == "completed"]
    assert len(completed) >= 1
    assert set(folds["trial_id"]) >= set(completed["trial_id"])
    assert {"confusion_matrix", "roc", "f1_weighted", "auc_macro", "well/accuracy"} <= set(
        folds.columns
    )
    assert set(epochs["fold"]) == {-1, 0, 1}
    # the stored fold metric equals scikit-learn on the checkpointed fold model's predictions
    best = completed.iloc[0]
    fold_row = folds[(folds["trial_id"] == best["trial_id"]) & (folds["fold"] == 1)].iloc[0]
    model, config = load_model(Path(best["checkpoint"]) / "fold_1")
    ds = CellDataset(workspace / "dataset")
    _, val_ids = load_folds(ds.path, "k2-well").split(1)
    meta = ds.metadata().set_index("cell_id")
    rows = np.array([meta.index.get_loc(c) for c in val_ids])
    stats = ds.manifest.stats
    x = (
        (ds.images(rows) - np.reshape(stats.mean, (1, -1, 1, 1)))
        / np.reshape(stats.std, (1, -1, 1, 1))
    ).astype(np.float32)
    import torch

    with torch.no_grad():
        pred = model.eval()(torch.from_numpy(x)).argmax(1).numpy()
    truth = ds.labels()[rows]
    assert fold_row["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(truth, pred), abs=1e-9
    )
    mean = folds[folds["trial_id"] == best["trial_id"]]["balanced_accuracy"].mean()
    assert best["val/balanced_accuracy"] == pytest.approx(mean)


def test_injected_failure_is_retried_from_checkpoint(workspace, ray_local):
    """The failure comes from a test plugin (tests/engine/plugins/fail_once.py) that the study
    file lists: the installed trainable has no fault-injection hook."""
    from cytotune.engine.search.runner import run_search

    study = StudyConfig.from_yaml(
        _study_file(
            workspace,
            "retry",
            budget={"trials": 1, "max_epochs": 2, "grace_epochs": 1},
            scheduler="none",
            plugins=[str(FAIL_ONCE_PLUGIN)],
        )
    )
    store = run_search(study, verbose=False)
    trial = store.table("trials").iloc[0]
    assert (Path(study.study_dir) / "injected-failure").is_file(), "the failure was injected"
    assert trial["status"] == "completed"
    assert trial["retries"] == 1
    assert "injected failure" in trial["last_error"]
    epochs = store.table("epochs")
    resumed = sorted(epochs[epochs["fold"] == -1]["epoch"])
    assert resumed == [1, 2]  # resumed at epoch 2, nothing repeated


def test_killed_driver_resumes_without_losing_or_repeating_trials(workspace):
    study_file = _study_file(
        workspace,
        "resume",
        budget={"trials": 4, "max_epochs": 2, "grace_epochs": 1},
        scheduler="none",
        max_failures=0,
    )
    study = StudyConfig.from_yaml(study_file)
    store = StudyStore(study.study_dir)
    script = textwrap.dedent("""
        import sys
        from cytotune.engine.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", script, "search", "--config", str(study_file), "--quiet"],
        env=env,
        start_new_session=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline:
        done = store.table("trials") if store.exists() else None
        if done is not None and not done.empty and (done["status"] == "completed").sum() >= 1:
            break
        time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = store.table("trials")
    completed_before = before[before["status"] == "completed"]
    assert 1 <= len(completed_before) < 4
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "search",
            "--config",
            str(study_file),
            "--resume",
            "--quiet",
        ],
        env=env,
        timeout=400,
    )
    assert result.returncode == 0
    after = store.table("trials")
    assert len(after) == 4
    assert after["trial_id"].is_unique
    assert set(after["status"]) == {"completed"}
    kept = after.set_index("trial_id").loc[completed_before["trial_id"]]
    assert (
        kept["ended_at"].to_numpy() == completed_before.set_index("trial_id")["ended_at"].to_numpy()
    ).all()
    epochs = store.table("epochs")
    assert not epochs.duplicated(["trial_id", "epoch", "fold"]).any()
    assert len(epochs[epochs["fold"] == -1]) == 4 * 2


def test_trials_cut_by_the_time_budget_are_stopped_with_checkpoints(workspace, ray_local):
    from cytotune.engine.search.runner import run_search

    study = StudyConfig.from_yaml(
        _study_file(
            workspace,
            "budgeted",
            budget={
                "trials": 2,
                "max_epochs": 500,
                "grace_epochs": 1,
                "time_budget_s": 30,  # trials must start and finish an epoch on a loaded 2-core CI machine
                "race": "epochs",
            },
            scheduler="none",
        )
    )
    store = run_search(study, verbose=False)
    trials = store.table("trials")
    assert "running" not in set(trials["status"]), trials[["trial_id", "status"]]
    stopped = trials[(trials["status"] == "stopped") & (trials.get("epochs_done", 0) >= 1)]
    columns = ["trial_id", "status", "epochs_done", "started_at", "ended_at", "error"]
    assert len(stopped) >= 1, trials[columns].to_string()  # cut mid-run after at least one epoch
    for row in stopped.to_dict("records"):
        assert Path(row["checkpoint"]).is_dir()
    folds = store.table("folds")
    assert set(stopped["trial_id"]) <= set(folds["trial_id"])


def test_unknown_well_column_fails_before_any_trial(workspace):
    from cytotune.engine.search.runner import run_search

    study = StudyConfig.from_yaml(_study_file(workspace, "nowell", well_column="plate_well"))
    with pytest.raises(ValueError, match="well_column 'plate_well' is not a column.*well"):
        run_search(study, verbose=False)
    assert not Path(study.study_dir).exists()


def test_study_whose_first_trials_all_fail_stops_with_the_error(workspace, ray_local):
    from cytotune.engine.search.runner import SearchFailed, run_search

    broken = {
        "name": "broken",
        "default_family": "backbone",
        "families": {
            "backbone": {
                "backbone": "resnet10t",
                "timm_kwargs": {"type": "fixed", "value": {"no_such_argument": 1}},
            }
        },
        "train": {"batch_size": 32},
    }
    (workspace / "broken.yaml").write_text(yaml.safe_dump(broken))
    study = StudyConfig.from_yaml(
        _study_file(
            workspace,
            "failing",
            space="broken.yaml",
            budget={"trials": 12, "max_epochs": 2, "grace_epochs": 1, "max_concurrent": 1},
            max_failures=0,
        )
    )
    with pytest.raises(SearchFailed, match="first 3 trials all failed.*no_such_argument"):
        run_search(study, verbose=False)
    trials = StudyStore(study.study_dir).table("trials")
    assert (trials["status"] == "failed").sum() >= 3
    assert len(trials) < 12
    assert StudyStore(study.study_dir).status()["status"] == "failed"


def test_multi_objective_study_uses_nsga2(workspace, ray_local):
    """NSGA-II stamps the trials it samples with its generation (a system attribute in the
    study's optuna.db); TPE and random sampling write no such key. The first two trials are
    the two families' defaults (enqueued, not sampled), so the third is NSGA-II's."""
    import optuna
    from cytotune.engine.search.runner import run_search

    path = _study_file(
        workspace,
        "pareto",
        objectives=[{"metric": "balanced_accuracy"}, {"metric": "log_loss"}],
        scheduler="none",
        budget={"trials": 3, "max_epochs": 1, "grace_epochs": 1},
    )
    study = StudyConfig.from_yaml(path)
    assert study.multi_objective
    assert [o.mode for o in study.objectives] == ["max", "min"]
    store = run_search(study, verbose=False)
    trials = store.table("trials")
    assert len(trials) == 3
    assert set(trials["status"]) == {"completed"}
    loaded = optuna.load_study(study_name="pareto", storage=store.optuna_url, sampler=None)
    assert [d.name for d in loaded.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert len(loaded.trials) == 3
    generations = [t.system_attrs.get("NSGAIISampler:generation") for t in loaded.trials]
    assert generations[2:] == [0], f"NSGA-II did not sample the third trial: {generations}"


def test_asha_stops_trials_early_and_the_store_says_pruned(workspace, ray_local, monkeypatch):
    """ASHA's own decisions (the scheduler's STOP answers to Tune's results) are recorded
    by wrapping the scheduler the search builds: some trials must be stopped before max_epochs,
    and those are exactly the store's pruned ones."""
    from cytotune.engine.search import runner
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    decisions: dict[str, list[tuple[int, str]]] = {}
    build = runner.create_scheduler

    def create_scheduler(study):
        scheduler = build(study)
        assert isinstance(scheduler, ASHAScheduler)
        decide = scheduler.on_trial_result

        def on_trial_result(tune_controller, trial, result):
            decision = decide(tune_controller, trial, result)
            decisions.setdefault(trial.trial_id, []).append((result["epoch"], decision))
            return decision

        scheduler.on_trial_result = on_trial_result
        return scheduler

    monkeypatch.setattr(runner, "create_scheduler", create_scheduler)
    study = StudyConfig.from_yaml(
        _study_file(
            workspace,
            "asha",
            objective={"metric": "log_loss"},  # continuous: no ties at the rung
            budget={
                "trials": 6,
                "max_epochs": 3,
                "grace_epochs": 1,
                "max_concurrent": 1,
                "race": "epochs",  # ASHA's rungs at epochs 1 and 3, not at folds
            },
        )
    )
    store = runner.run_search(study, verbose=False)
    # ASHA also answers STOP at max_t (3 epochs): that is a trial's normal end, not a pruning
    stopped = {
        trial_id
        for trial_id, answers in decisions.items()
        for epoch, decision in answers
        if decision == TrialScheduler.STOP and epoch < 3
    }
    assert len(decisions) == 6
    assert stopped, f"ASHA stopped no trial before max_epochs: {decisions}"
    trials = store.table("trials").set_index("trial_id")
    assert set(trials.index[trials["status"] == "pruned"]) == set(stopped)
    assert set(trials.index[trials["status"] == "completed"]) == set(decisions) - set(stopped)


def test_ray_data_loader_inside_trials_never_starves(workspace, ray_local):
    """Trials reserving every CPU would leave Ray Data's tasks none; concurrency is capped."""
    from cytotune.engine.search.runner import max_concurrent, run_search

    path = _study_file(
        workspace,
        "raydata",
        train={"loader": "ray"},
        scheduler="none",
        budget={"trials": 2, "max_epochs": 1, "grace_epochs": 1},
    )
    study = StudyConfig.from_yaml(path)
    assert max_concurrent(study) == 1  # 2 CPUs, 1 per trial: one stays free for data tasks
    store = run_search(study, verbose=False)
    assert set(store.table("trials")["status"]) == {"completed"}


def test_study_refused_for_resources_leaves_no_running_store(workspace, ray_local):
    """Issue 14, item 5: a refusal up front writes no study that says "running"."""
    from cytotune.engine.search.runner import run_search

    study = StudyConfig.from_yaml(
        _study_file(workspace, "too-big", resources={"cpus": 64, "gpus": 0})
    )
    with pytest.raises(ValueError, match="largest Ray node has"):
        run_search(study, verbose=False)
    status = Path(study.study_dir) / "study.json"
    assert not status.exists() or json.loads(status.read_text())["status"] != "running"


def test_budget_defaults_never_contradict_what_the_user_wrote():
    """Issue 14, item 4: ``{trials: 2, max_epochs: 1}`` works; only a written grace is checked."""
    from cytotune.engine.search.study import Budget, StudyError

    assert Budget(trials=2, max_epochs=1).grace_epochs == 1
    assert Budget(max_epochs=10).grace_epochs == 2
    with pytest.raises(StudyError, match="grace_epochs"):
        Budget(max_epochs=1, grace_epochs=2)
    with pytest.raises(StudyError, match="race"):
        Budget(race="sideways")


def test_families_that_cannot_apply_are_left_out_and_said(tmp_path, capsys):
    """Channel attention needs >= 2 channels: on a 1-channel dataset the search leaves it out
    and prints why; the other families stay, defaults of each evaluated first."""
    from cytotune.engine.search.runner import applicable_space, create_scheduler
    from cytotune.engine.search.study import Budget, FoldsSpec
    from cytotune.engine.synth import write_dataset
    from cytotune.search_spaces import load_space

    write_dataset("microtubule", tmp_path / "mt", 60, size=16, seed=0, progress=False)
    study = StudyConfig(
        name="one-channel", dataset=str(tmp_path / "mt"), folds=FoldsSpec(k=5), budget=Budget()
    )
    space = applicable_space(load_space("default"), study)
    out = capsys.readouterr().out
    assert "leaving out family channel_attention: it needs >= 2 channels" in out
    assert "channel_attention" not in space.families
    assert "backbone" in space.families
    firsts = [p["family"] for p in space.family_defaults()]
    assert firsts[0] == space.default_family
    assert sorted(firsts) == sorted(space.families)
    race = create_scheduler(study)  # ASHA over folds: rungs after 1, 2, 4 folds of 5
    assert (race._time_attr, race._max_t, race._reduction_factor) == ("folds_done", 5, 2)
    assert [m for m, _ in race._brackets[0]._rungs][::-1][:3] == [1, 2, 4]


SMALL_CNN = {"family": "small_cnn", "small_cnn": {"filters": 8, "dense_units": 8}, "train": {}}


def _two_fold_study(tmp_path, name: str, cells: int, budget) -> StudyConfig:
    """A study of a synthetic metastasis dataset of ``cells`` cells in 2 grouped folds, trained
    in this process (no Ray)."""
    from cytotune.engine.data.folds import make_folds, save_folds
    from cytotune.engine.search.study import FoldsSpec
    from cytotune.engine.synth import write_dataset

    write_dataset("metastasis", tmp_path / "d", cells, size=16, seed=0, progress=False)
    save_folds(tmp_path / "d", make_folds(tmp_path / "d", k=2, group="well", name="k2"))
    return StudyConfig(
        name=name,
        dataset=str(tmp_path / "d"),
        folds=FoldsSpec(name="k2", k=2),
        budget=budget,
        train={"loader": "inprocess"},
    )


def test_fold_race_reports_running_means_and_resumes_at_the_next_fold(tmp_path):
    """race: folds without Ray: each step trains one fold to the end and reports the mean over
    the folds done; a checkpoint restores the finished folds (without optimiser state, linked
    once) and continues with the next fold."""
    import torch
    from cytotune.engine.search.crossval import CrossValidation
    from cytotune.engine.search.study import Budget

    study = _two_fold_study(tmp_path, "race", 96, Budget(max_epochs=2))
    sample = SMALL_CNN
    cv = CrossValidation(study, sample)
    first, _ = cv.step()
    assert (first["folds_done"], cv.finished) == (1, False)
    assert first["val/f1_weighted"] == first["fold0/f1_weighted"]
    assert [p["epoch"] for p in first["fold_curve"]] == [1, 2]
    cv.save(tmp_path / "ckpt", cv.fold_details)
    state = torch.load(tmp_path / "ckpt/fold_0/trainer.pt", weights_only=True)
    assert "optimizer" not in state  # a finished fold is never trained again
    resumed = CrossValidation(study, sample)
    resumed.restore(tmp_path / "ckpt")
    assert resumed.folds_done == 1
    second, details = resumed.step()
    assert resumed.finished
    assert second["folds_done"] == 2
    assert len(details) == 2
    scores = [second["fold0/f1_weighted"], second["fold1/f1_weighted"]]
    assert second["fold0/f1_weighted"] == first["fold0/f1_weighted"]
    assert second["val/f1_weighted"] == pytest.approx(np.mean(scores))
    assert {"time/train_s", "time/evaluate_s", "time/build_s"} <= set(second)


def test_text_leaderboard_shows_the_folds_each_trial_was_scored_on(tmp_path):
    """A raced-out trial says on how many folds it was scored, and ranks below full ones."""
    from cytotune.engine.search.leaderboard import format_leaderboard
    from cytotune.engine.search.store import StudyStore

    store = StudyStore(str(tmp_path / "s"))
    rows = [("full", "completed", 5, 0.80), ("raced", "pruned", 1, 0.95)]
    for trial_id, status, folds, value in rows:
        store.upsert(
            "trials",
            (trial_id,),
            {
                "trial_id": trial_id,
                "family": "backbone",
                "status": status,
                "epochs_done": 40,
                "folds_done": folds,
                "val/f1_weighted": value,
            },
        )
    store.flush()
    lines = format_leaderboard(store, "f1_weighted", "max").splitlines()
    assert "folds" in lines[0]
    assert lines[1].split()[1:6] == ["full", "backbone", "completed", "40", "5"]
    assert lines[2].split()[1:6] == ["raced", "backbone", "pruned", "40", "1"]


def test_checkpoints_keep_every_report_so_a_killed_drivers_rows_come_back(tmp_path):
    """A driver killed after an epoch's report but before the store's flush (and before Tune
    synced its result.json to the study) loses that epoch's rows; the resumed trial goes on
    after its checkpoint. Each checkpoint keeps every report so far, and the trial's end
    backfills the store from the last one."""
    from cytotune.engine.search.callbacks import _checkpoint_reports
    from cytotune.engine.search.crossval import CrossValidation
    from cytotune.engine.search.recorder import StudyRecorder
    from cytotune.engine.search.store import StudyStore
    from cytotune.engine.search.study import Budget
    from ray.tune import Checkpoint

    study = _two_fold_study(
        tmp_path, "kept", 64, Budget(max_epochs=2, grace_epochs=1, race="epochs")
    )
    sample = SMALL_CNN
    cv = CrossValidation(study, sample)
    first, _ = cv.step()
    cv.save(tmp_path / "ckpt1")
    resumed = CrossValidation(study, sample)  # the driver was killed: a new actor restores
    resumed.restore(tmp_path / "ckpt1")
    second, details = resumed.step()
    assert resumed.finished
    resumed.save(tmp_path / "ckpt2", details)
    reports = _checkpoint_reports(Checkpoint.from_directory(str(tmp_path / "ckpt2")))
    assert [r["epoch"] for r in reports] == [1, 2]
    assert reports[0]["val/f1_weighted"] == pytest.approx(first["val/f1_weighted"])

    store = StudyStore(str(tmp_path / "study"))
    recorder = StudyRecorder(store, k=2, max_epochs=2, flush_every_s=float("inf"))
    recorder.started("t1", sample)
    recorder.reported("t1", second)  # epoch 1's report died with the driver
    assert recorder.backfill("t1", reports) == 3  # epoch 1: folds 0 and 1, and their mean
    rows = {(r["epoch"], r["fold"]): r for r in store.rows("epochs")}
    assert sorted(rows) == [(1, -1), (1, 0), (1, 1), (2, -1), (2, 0), (2, 1)]
    assert rows[(1, 0)]["f1_weighted"] == pytest.approx(first["fold0/f1_weighted"])
    assert _checkpoint_reports(None) == []
