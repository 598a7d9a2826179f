"""The explain job's start-up: quality actors reused across trials and methods (each fold model
loaded once per actor), their job assignment, and the maps stage run in the driver for one CPU
actor on a local Ray."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from cytotune.explainers.job import pool
from cytotune.explainers.job.scores import QualityContext, actor_count, assign, sample_scores

from ._study import by_family


def _jobs(trials: list[str], methods: list[str]):
    return [(SimpleNamespace(trial_id=t), {m: {}}, False) for t in trials for m in methods]


def test_actor_count_and_assignment_by_hand():
    assert actor_count(jobs=6, gpus=0, cpus=2, gpus_per_actor=0.25) == 2
    assert actor_count(jobs=15, gpus=1, cpus=16, gpus_per_actor=0.25) == 4
    assert actor_count(jobs=3, gpus=2, cpus=32, gpus_per_actor=0.25) == 3
    assert actor_count(jobs=4, gpus=0, cpus=0.5, gpus_per_actor=0.25) == 1
    # contiguous balanced runs: actor 0 scores a, a, b; actor 1 b, c, c (4 trial loads, not 6)
    assert assign(_jobs(["a", "b", "c"], ["g", "s"]), 2) == [0, 0, 0, 1, 1, 1]
    # 3 trials x 5 methods on 4 actors: 4, 4, 4, 3 jobs; 6 trial loads instead of 15
    got = assign(_jobs(["a", "b", "c"], list("12345")), 4)
    assert got == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3]
    trials = [t for t in "abc" for _ in range(5)]
    assert len({(a, t) for a, t in zip(got, trials)}) == 6
    assert assign(_jobs(["a"], ["g", "s", "i"]), 3) == [0, 1, 2]


def test_in_driver_only_for_one_cpu_actor_on_a_local_one_node_ray(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}, {"Alive": False}])
    assert pool.in_driver(actors=1, gpus_per_actor=0, joined_cluster=False)
    assert not pool.in_driver(actors=2, gpus_per_actor=0, joined_cluster=False)
    assert not pool.in_driver(actors=1, gpus_per_actor=0.25, joined_cluster=False)
    assert not pool.in_driver(actors=1, gpus_per_actor=0, joined_cluster=True)
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}, {"Alive": True}])
    assert not pool.in_driver(actors=1, gpus_per_actor=0, joined_cluster=False)

    calls = []

    class Batches:
        def iter_batches(self, batch_size, batch_format):
            assert (batch_size, batch_format) == (5, "pyarrow")
            yield from ("b1", "b2")

    out = list(pool.run_in_driver(Batches(), lambda b: calls.append(b) or b.upper(), 5))
    assert out == ["B1", "B2"]
    assert calls == ["b1", "b2"]


@pytest.mark.slow
def test_quality_context_loads_each_fold_model_once_and_scores_like_a_fresh_one(trained_study):
    from cytotune.explainers.job.config import ExplainConfig
    from cytotune.explainers.job.plan import build_plan

    plan = build_plan(ExplainConfig(study=str(trained_study), top_k=3, methods=("saliency",)))
    trial = by_family(plan, "small_cnn")
    sample = plan.cells.sample(n=8, random_state=0)
    context = QualityContext(str(plan.dataset.path))
    methods = {"saliency": {}, "gradcam": {}}
    shared = [
        context.score(trial.fold_dirs, sample, {m: o}, trial.trial_id, 0, "fp32", False)
        for m, o in methods.items()
    ]
    folds = sample["fold"].nunique()
    assert context.loads == folds  # not once per method
    fresh = sample_scores(
        trial.fold_dirs, str(plan.dataset.path), sample, {"gradcam": {}}, trial.trial_id, 0, "fp32"
    )

    def table(rows):
        return pd.DataFrame(rows).set_index(["method", "metric"])["mean"]

    pd.testing.assert_series_equal(table(shared[1]), table(fresh))
    assert np.isfinite(table(shared[0]).loc[("saliency", "learned_head_rho")])


def test_the_maps_read_comes_in_blocks_of_one_actor_batch(trained_study, ray_local):
    """On 2 GPUs the 8 actors of a 6,000-cell job got 6 blocks of 1,024 rows, so the first
    actors ready took the whole job and one GPU sat idle (BENCHMARKS.md, scale-out): blocks
    of one batch spread a job over every actor."""
    from cytotune.explainers.job.config import ExplainConfig
    from cytotune.explainers.job.maps import cell_blocks
    from cytotune.explainers.job.plan import build_plan

    config = ExplainConfig(study=str(trained_study), top_k=1, methods=("saliency",), batch_size=16)
    plan = build_plan(config)
    read = cell_blocks(plan, config)
    blocks = [t.num_rows for t in read.iter_batches(batch_size=None, batch_format="pyarrow")]
    assert sum(blocks) == len(plan.cells)
    assert max(blocks) <= 2 * 16  # about one batch: Ray Data cuts a block once it is over
    assert len(blocks) >= len(plan.cells) // (2 * 16)


def test_explain_program_ends_at_once_with_its_output_and_files(trained_study, tmp_path):
    """``python -m cytotune.engine.cli explain`` (cli.entry) ends with os._exit after a local
    job: the quality table and the outputs line are printed whole, the exit code is the job's
    and every map table is written."""
    import shutil
    import subprocess
    import sys

    from cytotune.explainers.job.layout import maps_path

    study = tmp_path / "study"
    shutil.copytree(trained_study, study)
    argv = ["explain", "--study", str(study), "--top-k", "1", "--methods", "saliency", "gradcam"]
    argv += ["--limit", "12", "--stages", "maps", "quality", "--quality-cells", "4", "--quiet"]
    code = "import sys; from cytotune.engine.cli import entry; entry(sys.argv[1:])"
    out = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.rstrip().endswith(f"outputs: {study / 'explain'}")
    assert "explanation quality" in out.stdout
    trial = pd.read_parquet(study / "explain" / "quality.parquet")["trial_id"].iloc[0]
    for method in ("saliency", "gradcam"):
        assert len(pd.read_parquet(maps_path(study, trial, method))) == 12
