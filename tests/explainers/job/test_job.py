"""The explain job end to end on a real (small) study, checked against direct computations."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from cytotune.engine.data.augment import normalize
from cytotune.engine.data.dataset import CellDataset
from cytotune.engine.train.checkpoint import load_model
from cytotune.explainers import create_explainer
from cytotune.explainers.job.layout import (
    decode_map,
    explain_dir,
    maps_path,
    population_dir,
    read_maps,
)
from cytotune.explainers.job.worker import cam_layers
from sklearn.metrics import balanced_accuracy_score

from ._study import by_family

pytestmark = pytest.mark.slow


def _maps(study, trial, method) -> pd.DataFrame:
    return read_maps(maps_path(study, trial, method)).to_pandas()


def test_every_planned_cell_once_per_trial_and_method(explained):
    study, config, plan, state = explained
    assert sorted(t.family for t in plan.trials) == ["mhl_attention", "protopnet", "small_cnn"]
    folds = plan.folds.set_index("cell_id")["fold"]
    for trial in plan.trials:
        for method in config.method_names:
            frame = _maps(study, trial.trial_id, method)
            assert sorted(frame["cell_id"]) == sorted(plan.cells["cell_id"])
            # split=val: each cell is explained by the model of the fold that held it out
            assert (frame["fold"].to_numpy() == folds.loc[frame["cell_id"]].to_numpy()).all()
            shape = tuple(frame["map_shape"].iloc[0])
            if method == "gradcam":  # one map at its layer's size (at most the crop's)
                assert shape[0] == 1
                assert 4 <= min(shape[1:]) <= max(shape[1:]) <= 32
            else:
                assert shape == (3, 32, 32)
    assert state.data["status"] == "finished"
    assert not state.data["failures"]


@pytest.mark.parametrize("method", ["gradcam", "integrated_gradients"])
def test_stored_maps_and_predictions_equal_a_direct_computation(explained, method):
    study, config, plan, _ = explained
    trial = by_family(plan, "small_cnn")
    frame = _maps(study, trial.trial_id, method)
    frame = frame[frame["fold"] == 1].head(12)
    dataset = CellDataset(plan.dataset.path)
    rows = plan.cells.set_index("cell_id").loc[frame["cell_id"], "row"].to_numpy()
    model, cfg = load_model(trial.fold_dirs[1])
    norm = cfg["data"]["normalization"]
    x = normalize(
        torch.from_numpy(dataset.images(rows).astype(np.float32)),
        torch.tensor(norm["offset"]),
        torch.tensor(norm["scale"]),
    )
    with torch.no_grad():
        probs = torch.softmax(model(x), 1)
    np.testing.assert_array_equal(frame["prediction_index"], probs.argmax(1).numpy())
    np.testing.assert_allclose(frame["confidence"], probs.max(1).values.numpy(), rtol=1e-5)
    layer = cam_layers(model, (3, 32, 32))[-1] if method == "gradcam" else None
    explainer = create_explainer(method, model, layer, **config.method_options[method])
    expected = explainer.attribute(x, target=probs.argmax(1)).detach().numpy()
    size = expected.shape[-2:]  # a CAM is stored at its layer's size, read at the crop's
    stored = np.stack([decode_map(m, s, size) for m, s in zip(frame["map"], frame["map_shape"])])
    scale = np.abs(expected).max()
    np.testing.assert_allclose(stored, expected, atol=2e-3 * scale, rtol=2e-3)


def test_mass_in_cell_and_evidence_match_hand_computation(explained):
    study, _, plan, _ = explained
    frame = _maps(study, by_family(plan, "small_cnn").trial_id, "saliency")
    dataset = CellDataset(plan.dataset.path)
    row_of = plan.cells.set_index("cell_id")["row"]
    cell, evidence = dataset.masks(), dataset.masks("evidence")
    for _, r in frame.head(10).iterrows():
        m = np.clip(decode_map(r["map"], r["map_shape"], cell.shape[-2:]), 0, None).sum(0)
        row = row_of[r["cell_id"]]
        assert r["mass_cell"] == pytest.approx((m * cell[row]).sum() / m.sum(), rel=1e-4)
        assert r["mass_evidence"] == pytest.approx((m * evidence[row]).sum() / m.sum(), rel=1e-4)
        peak = np.unravel_index(np.argmax(m), m.shape)
        assert r["pointing_hit"] == float(evidence[row][peak] > 0)


def test_population_maps_equal_numpy_geometric_means(explained):
    study, config, plan, _ = explained
    trial, method, eps = by_family(plan, "small_cnn").trial_id, "gradcam", 1e-3
    frame = _maps(study, trial, method)
    hw = tuple(plan.manifest.shape[1:])
    labels = plan.dataset.metadata().set_index("cell_id")["label"]
    for cls in plan.manifest.classes:
        part = frame[labels.loc[frame["cell_id"]].to_numpy() == cls]
        maps = np.stack(
            [
                np.clip(decode_map(m, s, hw).astype(np.float64), 0, None).sum(0)
                for m, s in zip(part["map"], part["map_shape"])
            ]
        )
        peak = maps.reshape(len(maps), -1).max(1)[:, None, None]
        maps = np.divide(
            maps, peak, out=np.zeros_like(maps), where=peak > 0
        )  # all-zero maps stay 0
        expected = np.exp(np.log(maps + eps).mean(0)) - eps
        stored = np.load(population_dir(study, trial, method, cls) / "gmean_map.npy")
        np.testing.assert_allclose(stored, expected, rtol=1e-5, atol=1e-6)
        r = np.load(population_dir(study, trial, method, cls) / "correlation.npy")
        summary = pd.read_parquet(explain_dir(study) / "population.parquet")
        row = summary[
            (summary.trial_id == trial)
            & (summary.method == method)
            & (summary["class"] == cls)
            & (summary.channel == "all")
        ]
        assert row["positive_ratio"].item() == pytest.approx((r[-1] > config.threshold).mean())
        assert row["negative_ratio"].item() == pytest.approx((r[-1] < -config.threshold).mean())
        assert row["n"].item() == len(part)


def test_quality_table_covers_every_trial_and_method(explained):
    study, config, plan, _ = explained
    quality = pd.read_parquet(explain_dir(study) / "quality.parquet")
    for trial in plan.trials:
        for method in config.method_names:
            rows = quality[
                (quality.trial_id == trial.trial_id) & (quality.method == method)
            ].set_index("metric")
            assert 0 <= rows.loc["deletion_auc", "mean"] <= 1
            assert 0 <= rows.loc["insertion_auc", "mean"] <= 1
            assert rows.loc["randomisation_passed", "mean"] in (0.0, 1.0)
            assert rows.loc["deletion_auc", "n"] == config.quality_cells
            frame = _maps(study, trial.trial_id, method)
            assert rows.loc["mass_cell", "mean"] == pytest.approx(
                frame["mass_cell"].mean(), rel=1e-5
            )
            # the model verdict's evidence: held-out balanced accuracy (sklearn); it decides, so
            # the head-only score was left out
            want = balanced_accuracy_score(frame["label_index"], frame["prediction_index"])
            assert rows.loc["heldout_balanced_accuracy", "mean"] == pytest.approx(want)
            assert rows.loc["chance_balanced_accuracy", "mean"] == 0.5
            assert rows.loc["learned_head_skipped", "mean"] == 1
            assert "learned_head_rho" not in rows.index
    proto = quality[quality.method == "prototypes"].set_index("metric")
    assert proto.loc["n_distinct_prototypes", "n"] == 3  # one value per fold model


def _quality_in_process(explained, tmp_path, monkeypatch, **changes):
    """The quality stage on a copy of the explained study (one trial, saliency), its jobs scored
    in this process instead of on Ray actors; returns its rows and the head-only scorings."""
    import cytotune.engine.cluster as cluster
    from cytotune.explainers.job import scores
    from cytotune.explainers.job.plan import build_plan
    from cytotune.explainers.job.state import ExplainState
    from cytotune.explainers.quality import sanity

    source, config, _, _ = explained
    study = tmp_path / "study"
    shutil.copytree(source, study)
    config = dataclasses.replace(
        config, study=str(study), top_k=1, methods=("saliency",), overwrite=True, **changes
    )
    plan = build_plan(config)
    heads = []
    real = sanity.head_only_rho
    monkeypatch.setattr(sanity, "head_only_rho", lambda *a: heads.append(1) or real(*a))
    monkeypatch.setattr(cluster, "ensure_ray", lambda *a, **k: None)

    def in_process(plan, config, sample, jobs, progress=True):
        context = scores.QualityContext(str(plan.dataset.path))
        return [
            context.score(t.fold_dirs, sample, m, t.trial_id, config.seed, config.precision, *f)
            for t, m, *f in jobs
        ]

    monkeypatch.setattr(scores, "score_on_actors", in_process)
    table = scores.run_quality(plan, config, ExplainState(plan.study_dir), progress=False)
    rows = table[table["method"] == "saliency"].set_index("metric")["mean"]
    return rows, len(heads)


def test_the_head_only_score_is_left_out_where_held_out_predictions_decide(
    explained, tmp_path, monkeypatch
):
    rows, heads = _quality_in_process(explained, tmp_path, monkeypatch)
    assert heads == 0
    assert rows["heldout_balanced_accuracy_low"] > 0
    assert rows["learned_head_skipped"] == 1
    assert "learned_head_rho" not in rows.index


@pytest.mark.parametrize(
    "changes",
    [{"split": "train"}, {"head_check": True}],
    ids=["no-held-out-predictions", "asked-for"],
)
def test_the_head_only_score_is_computed_where_it_decides_or_is_asked_for(
    explained, tmp_path, monkeypatch, changes
):
    rows, heads = _quality_in_process(explained, tmp_path, monkeypatch, **changes)
    assert heads == 3  # once per fold model
    assert 0 <= rows["learned_head_rho"] <= 1
    assert "learned_head_skipped" not in rows.index
    assert ("heldout_balanced_accuracy_low" in rows.index) == ("head_check" in changes)


def test_prototype_mosaics_hold_the_closest_training_patches(explained):
    study, _, plan, _ = explained
    table = pd.read_parquet(explain_dir(study) / "prototypes.parquet")
    trial = by_family(plan, "protopnet")
    assert len(table) == 3 * 4  # 3 folds x 2 classes x 2 prototypes
    model, cfg = load_model(trial.fold_dirs[0])
    dataset = CellDataset(plan.dataset.path)
    meta = dataset.metadata()[["cell_id"]].reset_index(names="row").merge(plan.folds, on="cell_id")
    train = meta.loc[meta["fold"] != 0, "row"].to_numpy()
    norm = cfg["data"]["normalization"]
    x = normalize(
        torch.from_numpy(dataset.images(train).astype(np.float32)),
        torch.tensor(norm["offset"]),
        torch.tensor(norm["scale"]),
    )
    mask = torch.from_numpy(dataset.masks()[train]).float()[:, None]
    with torch.no_grad():
        _, d = model.distances(x, mask)
    brute = d.min(1).values.min(0).values.numpy()  # (M,) closest training patch per prototype
    fold0 = table[table.fold == 0].sort_values("prototype")
    np.testing.assert_allclose(fold0["top_distance"], brute, rtol=1e-4, atol=1e-6)
    for path in fold0["path"]:
        assert (study / path).is_file()
        assert (study / path.replace(".png", "_activation.png")).is_file()


def test_attention_figures_and_overlays_exist(explained):
    study, config, plan, _ = explained
    attention = pd.read_parquet(explain_dir(study) / "attention.parquet")
    assert set(attention["trial_id"]) == {by_family(plan, "mhl_attention").trial_id}
    assert all((study / p).is_file() for p in attention["path"])
    overlays = pd.read_parquet(explain_dir(study) / "overlays.parquet")
    assert len(overlays) == len(plan.trials) * len(config.method_names) * config.overlays
    assert all((study / p).is_file() for p in overlays["path"])


def test_rerun_recomputes_only_missing_or_changed_parts(explained):
    from cytotune.explainers.job.runner import run_explain

    study, config, plan, state = explained
    paths = {
        (t.trial_id, m): maps_path(study, t.trial_id, m)
        for t in plan.trials
        for m in config.method_names
    }
    before = {k: os.stat(p).st_mtime_ns for k, p in paths.items()}
    removed = (by_family(plan, "mhl_attention").trial_id, "saliency")
    shutil.rmtree(paths[removed])
    changed = dataclasses.replace(
        config, methods=("gradcam", "saliency", "integrated_gradients:n_steps=4")
    )
    run_explain(changed, progress=False, log=lambda *_: None)
    after = {k: os.stat(p).st_mtime_ns for k, p in paths.items()}
    recomputed = {k for k in paths if after[k] != before[k]}
    expected = {removed} | {(t.trial_id, "integrated_gradients") for t in plan.trials}
    assert recomputed == expected
    run_explain(config, progress=False, log=lambda *_: None)  # back to the fixture's settings


def test_a_failing_method_is_recorded_and_the_rest_finishes(trained_study, tmp_path):
    import shutil

    from cytotune.explainers.job.config import ExplainConfig
    from cytotune.explainers.job.runner import run_explain

    study = tmp_path / "study"
    shutil.copytree(trained_study, study)
    config = ExplainConfig(
        study=str(study),
        trials=("small_cnn",),
        methods=("saliency", "occlusion:window=999"),
        stages=("maps", "quality"),
        quality_cells=8,
        limit=40,
    )
    _, state = run_explain(config, progress=False, log=lambda *_: None)
    failures = state.data["failures"]
    assert list(failures) == ["maps/small_cnn/occlusion"]
    assert "window" in failures["maps/small_cnn/occlusion"]
    assert maps_path(study, "small_cnn", "saliency").is_dir()
    assert not maps_path(study, "small_cnn", "occlusion").exists()
    assert not list((explain_dir(study) / "maps").rglob("*.tmp"))


def test_top_k_takes_finished_trials_first_then_fills_by_rank(trained_study, tmp_path):
    from cytotune.engine.search.leaderboard import leaderboard
    from cytotune.engine.search.store import StudyStore
    from cytotune.explainers.job.config import ExplainConfig
    from cytotune.explainers.job.plan import select_trials

    study = tmp_path / "study"
    shutil.copytree(trained_study, study)
    store = StudyStore(str(study))
    metric = store.status()["objectives"][0]["metric"]
    ranked = leaderboard(store, metric, "max")["trial_id"].tolist()
    assert len(ranked) == 3
    # the best trial was cut by the time budget, the second failed, the third finished
    store.upsert("trials", (ranked[0],), {"status": "stopped"})
    store.upsert("trials", (ranked[1],), {"status": "failed"})
    store.flush()
    _, trials = select_trials(StudyStore(str(study)), ExplainConfig(study=str(study), top_k=3))
    assert [t.trial_id for t in trials] == [ranked[2], ranked[0]]


def test_a_trial_added_to_top_k_gets_its_quality_scores(trained_study, tmp_path):
    from cytotune.explainers.job.config import ExplainConfig
    from cytotune.explainers.job.runner import run_explain

    study = tmp_path / "study"
    shutil.copytree(trained_study, study)
    common = dict(study=str(study), methods=("saliency",), stages=("maps", "quality"),
                  quality_cells=8, limit=40)  # fmt: skip
    _, state = run_explain(ExplainConfig(top_k=1, **common), progress=False, log=lambda *_: None)
    first = set(pd.read_parquet(explain_dir(study) / "quality.parquet")["trial_id"])
    scored_at = {p: v["finished"] for p, v in state.data["parts"].items() if "quality" in p}
    before = pd.read_parquet(explain_dir(study) / "quality.parquet")
    plan, state = run_explain(ExplainConfig(top_k=2, **common), progress=False, log=lambda *_: None)
    after = pd.read_parquet(explain_dir(study) / "quality.parquet")
    second = set(after["trial_id"])
    assert len(first) == 1
    assert second == {t.trial_id for t in plan.trials}
    assert len(second) == 2
    # the first trial kept its rows (it was not scored again); the added one has its own part
    (kept,) = first
    pd.testing.assert_frame_equal(
        before.reset_index(drop=True), after[after.trial_id == kept].reset_index(drop=True)
    )
    assert {f"quality/{t.trial_id}" for t in plan.trials} <= set(state.data["parts"])
    assert state.data["parts"][f"quality/{kept}"]["finished"] == scored_at[f"quality/{kept}"]


def test_a_resumed_run_reads_its_index_tables_typed_and_refuses_an_old_one(explained, tmp_path):
    import pyarrow.parquet as pq
    from cytotune.engine.cli import main
    from cytotune.engine.formats import FormatError
    from cytotune.explainers.job.layout import read_index
    from cytotune.explainers.job.runner import run_explain

    source, config, _, _ = explained
    study = tmp_path / "study"
    shutil.copytree(source, study)
    config = dataclasses.replace(config, study=str(study))
    before = read_index(study, "quality")
    target = explain_dir(study) / "quality.parquet"
    # the table as cytotune wrote it before format versions (plain pandas, same values)
    pq.read_table(target).replace_schema_metadata(None).to_pandas().to_parquet(target)
    with pytest.raises(FormatError, match="quality.parquet was written before.*cytotune upgrade"):
        run_explain(config, progress=False, log=lambda *_: None)
    assert main(["upgrade", str(study)]) == 0
    run_explain(config, progress=False, log=lambda *_: None)  # every part done: rows kept
    pd.testing.assert_frame_equal(read_index(study, "quality"), before)
    # --overwrite does not read the older table at all: it writes a new one
    pq.read_table(target).replace_schema_metadata(None).to_pandas().to_parquet(target)
    again = dataclasses.replace(config, overwrite=True, stages=("quality",))
    run_explain(again, progress=False, log=lambda *_: None)
    assert pq.read_schema(target).metadata[b"cytotune.version"] == b"1"
    assert sorted(read_index(study, "quality")["trial_id"].unique()) == sorted(
        before["trial_id"].unique()
    )


def test_cams_are_stored_at_their_layers_size_and_gradients_at_the_crops(explained):
    study, _, plan, _ = explained
    trial = by_family(plan, "small_cnn").trial_id
    crop = tuple(plan.manifest.shape[1:])
    cam = _maps(study, trial, "gradcam")
    saliency = _maps(study, trial, "saliency")
    cam_side = tuple(cam["map_shape"].iloc[0])[1:]
    assert cam_side[0] < crop[0]  # the layer's map, not the crop
    assert tuple(saliency["map_shape"].iloc[0]) == tuple(plan.manifest.shape)
    assert len(cam["map"].iloc[0]) == 2 * int(np.prod(cam_side))  # float16 bytes


def test_quality_scored_beside_the_maps_equals_quality_scored_after_them(
    trained_study, tmp_path, monkeypatch
):
    """The sampled cells scored while the maps are computed give the quality table of a stage
    run after the maps, also for a trial that turns out to need its head-only score (scored
    again, with it) and for a prototype model."""
    from cytotune.explainers.job import scores
    from cytotune.explainers.job.config import ExplainConfig
    from cytotune.explainers.job.runner import run_explain

    monkeypatch.setattr(scores, "needs_head", lambda _rows, trial_id: trial_id == "small_cnn")
    early_runs = []
    early = scores.early_sample_scores

    def counted(*args, **kwargs):
        early_runs.append(args)
        return early(*args, **kwargs)

    monkeypatch.setattr(scores, "early_sample_scores", counted)
    tables = {}
    for way, runs in {"beside": [("maps", "quality")], "after": [("maps",), ("quality",)]}.items():
        study = tmp_path / way
        shutil.copytree(trained_study, study)
        for stages in runs:
            config = ExplainConfig(
                study=str(study),
                trials=("small_cnn", "protopnet"),
                methods=("saliency", "gradcam"),
                stages=stages,
                quality_cells=8,
                limit=40,
            )
            run_explain(config, progress=False, log=lambda *_: None)
        assert len(early_runs) == (way == "beside")  # scored beside the maps, or not
        early_runs.clear()
        table = pd.read_parquet(explain_dir(study) / "quality.parquet")
        tables[way] = table.sort_values(["trial_id", "method", "metric"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(tables["beside"], tables["after"])
    heads = tables["beside"].query("metric == 'learned_head_rho'")
    assert set(heads["trial_id"]) == {"small_cnn"}
    assert "prototypes" in set(tables["beside"].query("trial_id == 'protopnet'")["method"])


def test_quality_folds_on_several_contexts_equal_one_fold_after_another(
    trained_study, monkeypatch, tmp_path
):
    """The quality's fold tasks spread over 3 contexts (CYTOTUNE_LOCAL_WORKERS) give the rows
    one context gives, in the same order; each task's timing is written (QualityTrace), the
    costliest first, and a new run removes the last run's timings."""
    import json

    from cytotune.explainers.job import scores
    from cytotune.explainers.job.config import ExplainConfig
    from cytotune.explainers.job.plan import build_plan

    config = ExplainConfig(
        study=str(trained_study),
        trials=("small_cnn", "protopnet"),
        methods=("gradcam", "smoothgrad:n=16"),
        quality_cells=12,
        limit=40,
    )
    plan = build_plan(config)
    sample = plan.cells.sample(n=12, random_state=config.seed)
    folds = sample["fold"].nunique()
    assert folds > 1
    data = str(plan.dataset.path)
    traces = tmp_path / "explain" / "workers" / "quality"  # not in the shared study
    tables = {}
    for workers in ("1", "3"):
        monkeypatch.setenv("CYTOTUNE_LOCAL_WORKERS", workers)
        scores.clear_traces(tmp_path)
        early = scores.early_sample_scores(data, config, sample, plan.trials, False, str(tmp_path))
        tables[workers] = {key: pd.DataFrame(rows) for key, rows in early.items()}
        (path,) = traces.glob("*.json")
        record = json.loads(path.read_text())
        tasks = record["tasks"]
        assert len(tasks) == 2 * 2 * folds  # 2 trials x 2 methods x the folds
        assert {t["context"] for t in tasks} <= set(range(int(workers)))
        assert all(record["started"] <= t["start"] <= t["end"] <= record["end"] for t in tasks)
        if workers == "1":  # one after another, the costliest first: cells x passes a cell
            passes = {"smoothgrad": 16, "gradcam": 1}
            ordered = sorted(tasks, key=lambda t: t["start"])
            costs = [t["cells"] * passes[t["methods"][0]] for t in ordered]
            assert costs == sorted(costs, reverse=True)
            assert ordered[0]["methods"] == ["smoothgrad"]
    assert list(tables["3"]) == list(tables["1"])
    for key, table in tables["1"].items():
        assert tables["3"][key].equals(table), key


def test_the_quality_ranks_its_tasks_by_the_methods_passes():
    """A fold task's cost: the cells times the passes per cell of its methods (Integrated
    Gradients' steps, SmoothGrad's noisy copies times its base's passes, a CAM's one)."""
    from cytotune.explainers.job.scores import ScoreJob
    from cytotune.explainers.methods import method_passes

    assert method_passes("gradcam", {}) == 1
    assert method_passes("integrated_gradients", {}) == 50
    assert method_passes("integrated_gradients", {"n_steps": 8}) == 8
    assert method_passes("smoothgrad", {"n": 4, "base": "integrated_gradients", "n_steps": 3}) == 12
    job = ScoreJob({0: "x"}, {"gradcam": {}, "smoothgrad": {"n": 5}}, "t", 0)
    assert job.cost(10) == 10 * (1 + 5)
    # options the method cannot read cost 1 pass here: the method says what is wrong when run
    assert method_passes("smoothgrad", {"base": "nosuch"}) == 1
    assert method_passes("integrated_gradients", {"n_steps": "abc"}) == 1
    assert method_passes("smoothgrad", {"n": None}) == 1


def _stage_calls(monkeypatch, entry) -> list:
    """What ``call_in_process`` is asked for (``entry(name, args)`` each time); it still runs."""
    from cytotune.explainers.job import processes

    called = []
    call = processes.call_in_process

    def recorded(fn, *args, name, **kwargs):
        called.append(entry(name, args))
        return call(fn, *args, name=name, **kwargs)

    monkeypatch.setattr(processes, "call_in_process", recorded)
    return called


def _child_starts(monkeypatch, entry=lambda name, warm, imports: warm) -> list:
    """``entry(name, warm, imports)`` of each stage child started (by default whether it was
    started warm, at the job's start), in order."""
    from cytotune.explainers.job import processes

    started = []
    start = processes._start_child

    def counted(name, warm=False, imports=(), cuda=False):
        started.append(entry(name, warm, imports))
        return start(name, warm, imports, cuda)

    monkeypatch.setattr(processes, "_start_child", counted)
    return started


def _explain_copy(trained_study, study, **config) -> Path:
    """``run_explain`` on a fresh copy of the study at ``study``; its explain directory."""
    from cytotune.explainers.job.config import ExplainConfig
    from cytotune.explainers.job.runner import run_explain

    shutil.copytree(trained_study, study)
    run_explain(ExplainConfig(study=str(study), **config), progress=False, log=lambda *_: None)
    return explain_dir(study)


def _files(folder: Path, pattern: str = "*") -> dict:
    return {
        p.relative_to(folder.parent): p.read_bytes() for p in folder.rglob(pattern) if p.is_file()
    }


def test_side_stages_in_processes_write_what_threads_write(trained_study, tmp_path, monkeypatch):
    """The prototype figures and the quality stage's sampled scores (one process per trial) run
    in spawned processes of their own (as on a GPU) and give the tables and PNGs of running in
    this process."""
    from cytotune.explainers.job import processes

    called = _stage_calls(monkeypatch, lambda name, args: name)
    started = _child_starts(monkeypatch)
    out = {}
    for way in ("0", "1"):
        monkeypatch.setenv(processes.STAGE_PROCESSES_ENV, way)
        explained = _explain_copy(
            trained_study, tmp_path / f"processes{way}", trials=("protopnet", "small_cnn"),
            methods=("saliency",), stages=("maps", "quality", "prototypes"), quality_cells=8,
            limit=40,
        )  # fmt: skip
        quality = pd.read_parquet(explained / "quality.parquet")
        pngs = _files(explained / "prototypes", "*.png")
        out[way] = quality.sort_values(["method", "metric"]).reset_index(drop=True), pngs
    # one process per trial for the sampled scores (the trials dealt out), one for the figures
    assert sorted(called) == ["cytotune-explain-prototypes", *["cytotune-explain-quality"] * 2]
    # the children came started at the job's start (warm), none was started later
    assert started == [True] * 3
    pd.testing.assert_frame_equal(out["0"][0], out["1"][0])
    assert len(out["0"][1]) > 0
    assert out["0"][1] == out["1"][1]


def test_attention_figures_in_a_process_beside_the_maps_equal_those_drawn_here(
    trained_study, tmp_path, monkeypatch
):
    """With the side stages in processes (as on a GPU) the attention figures are drawn in a
    warm process of their own and do not wait for the maps; the table and PNGs are those drawn
    in this process after the maps."""
    from cytotune.explainers.job import processes, runner
    from cytotune.explainers.job.config import ExplainConfig

    called = _stage_calls(monkeypatch, lambda name, args: name)
    started = _child_starts(monkeypatch)
    out = {}
    for way in ("0", "1"):
        monkeypatch.setenv(processes.STAGE_PROCESSES_ENV, way)
        config = ExplainConfig(study=str(trained_study), executor="local")
        assert runner.waits_after("attention", config) == (() if way == "1" else ("maps",))
        explained = _explain_copy(
            trained_study, tmp_path / f"attention{way}", trials=("mhl_attention",),
            methods=("saliency",), stages=("maps", "attention"), limit=40,
        )  # fmt: skip
        table = pd.read_parquet(explained / "attention.parquet")
        out[way] = table, _files(explained / "attention", "*.png")
    assert called == ["cytotune-explain-attention"]
    assert started == [True]  # started warm at the job's start
    assert len(out["0"][0]) > 0
    pd.testing.assert_frame_equal(out["0"][0], out["1"][0])
    assert out["0"][1] == out["1"][1]


def test_population_and_overlays_in_processes_write_what_threads_write(
    trained_study, tmp_path, monkeypatch
):
    """The stages that read the finished maps, dealt out to stage processes (as on a GPU host
    with 8 cores or more), write the same tables, arrays and PNGs as in this process."""
    from cytotune.explainers.job import processes
    from cytotune.explainers.job.populations import FollowMaps

    # map_in_threads(fn, jobs, threads) in each process: the name, the number of jobs and
    # whether they follow the maps stage's parts as they are written
    called = _stage_calls(
        monkeypatch,
        lambda name, args: (
            name,
            len(args[1]),
            any(isinstance(j[-1], FollowMaps) for j in args[1]),
        ),
    )
    started = _child_starts(monkeypatch, lambda name, warm, imports: (name, imports))
    monkeypatch.setenv(processes.STAGE_PROCESSES_ENV, "0")
    out = {}
    for count in ("1", "2"):
        monkeypatch.setenv(processes.TAIL_PROCESSES_ENV, count)
        explained = _explain_copy(
            trained_study, tmp_path / f"tail{count}", trials=("small_cnn", "protopnet"),
            methods=("saliency", "gradcam"), stages=("maps", "population", "overlays"),
            overlays=6, limit=40,
        )  # fmt: skip
        files = _files(explained / "population") | _files(explained / "overlays")
        tables = [pd.read_parquet(explained / f"{t}.parquet") for t in ("population", "overlays")]
        out[count] = tables, files
    # 2 x 2 (trial, method) pairs per stage: two processes of two pairs each, per stage
    # the population processes started at the maps' first batch and added the parts as they
    # came; the overlays' 4 pairs dealt out as one job per process (2 pairs each)
    assert (
        sorted(called)
        == [("cytotune-explain-overlays", 1, False)] * 2
        + [("cytotune-explain-population", 2, True)] * 2
    )
    # the overlays' two processes were started with the job, importing their stage's module
    # (none started for the threads' run); the population's start at the maps' first batch
    overlays = ("cytotune-explain-overlays", ("cytotune.explainers.job.overlays",))
    assert started.count(overlays) == 2
    assert ("cytotune-explain-overlays", ()) not in started  # none started cold after the maps
    for threads, spread in zip(out["1"][0], out["2"][0]):
        assert len(threads) > 0
        pd.testing.assert_frame_equal(threads, spread)
    assert any(p.suffix == ".png" for p in out["1"][1])
    assert any(p.suffix == ".npy" for p in out["1"][1])
    assert out["1"][1] == out["2"][1]


def test_a_failing_stage_process_raises_its_traceback():
    from cytotune.explainers.job.processes import call_in_process

    with pytest.raises(ZeroDivisionError) as raised:  # its own type: callers catch it as here
        call_in_process(divmod, 1, 0, name="cytotune-test")
    assert "raised in the process cytotune-test" in raised.value.__notes__[0]
    assert "ZeroDivisionError: integer division" in raised.value.__notes__[0]  # its traceback
    assert call_in_process(divmod, 7, 2, name="cytotune-test") == (3, 1)


def test_prototype_figures_drawn_in_blocks_equal_figures_drawn_at_once(
    trained_study, tmp_path, monkeypatch
):
    """Prototypes read and drawn three at a time (bounded memory) give the same PNG bytes and
    rows as all of them at once."""
    from cytotune.explainers.job import prototypes
    from cytotune.explainers.job.config import ExplainConfig
    from cytotune.explainers.job.runner import run_explain

    monkeypatch.setenv("CYTOTUNE_STAGE_PROCESSES", "0")  # the block size is this process's
    out = {}
    for block in (prototypes.PROTOTYPE_BLOCK, 3):
        monkeypatch.setattr(prototypes, "PROTOTYPE_BLOCK", block)
        study = tmp_path / f"block{block}"
        shutil.copytree(trained_study, study)
        config = ExplainConfig(study=str(study), trials=("protopnet",), stages=("prototypes",))
        run_explain(config, progress=False, log=lambda *_: None)
        explained = explain_dir(study)
        pngs = {
            p.relative_to(explained): p.read_bytes()
            for p in (explained / "prototypes").rglob("*.png")
        }
        rows = pd.read_parquet(explained / "prototypes.parquet")
        out[block] = pngs, rows
    (pngs_all, rows_all), (pngs_blocks, rows_blocks) = out.values()
    assert rows_all.groupby("fold").size().min() > 3  # each fold's prototypes span two blocks
    assert pngs_all == pngs_blocks
    pd.testing.assert_frame_equal(rows_all, rows_blocks)


def test_a_failed_map_table_commit_keeps_the_others_recorded(trained_study, tmp_path, monkeypatch):
    """The tables are published in threads: when one commit fails, the job raises its error
    after every other table is published and recorded as finished, so a rerun computes only
    the one that failed."""
    from cytotune.explainers.job import maps
    from cytotune.explainers.job.config import ExplainConfig
    from cytotune.explainers.job.runner import run_explain
    from cytotune.explainers.job.state import ExplainState

    commit = maps.StagedParts.commit

    def failing(self, part):
        if part[1] == "gradcam":
            raise OSError("disk full")
        return commit(self, part)

    monkeypatch.setattr(maps.StagedParts, "commit", failing)
    study = tmp_path / "study"
    shutil.copytree(trained_study, study)
    config = ExplainConfig(
        study=str(study), trials=("small_cnn",), methods=("saliency", "gradcam"),
        stages=("maps",), limit=20,
    )  # fmt: skip
    with pytest.raises(OSError, match="disk full"):
        run_explain(config, progress=False, log=lambda *_: None)
    recorded = ExplainState(study).data
    parts, failures = recorded["parts"], recorded["failures"]
    assert [p.rsplit("/", 1)[1] for p in failures] == ["gradcam"]
    assert "could not be published: OSError('disk full')" in next(iter(failures.values()))
    kept = {p: v["finished"] for p, v in parts.items() if p.startswith("maps/")}
    assert [p.rsplit("/", 1)[1] for p in kept] == ["saliency"]
    monkeypatch.setattr(maps.StagedParts, "commit", commit)
    plan, state = run_explain(config, progress=False, log=lambda *_: None)
    trial = plan.trials[0].trial_id
    finished = {p: v["finished"] for p, v in state.data["parts"].items() if p.startswith("maps/")}
    assert sorted(finished) == [f"maps/{trial}/gradcam", f"maps/{trial}/saliency"]
    assert finished[f"maps/{trial}/saliency"] == kept[f"maps/{trial}/saliency"]  # not redone
    assert state.data["failures"] == {}
