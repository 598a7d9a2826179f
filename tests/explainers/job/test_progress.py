"""The explain job keeps the user informed: a moving bar in the quality stage, and a line when
fewer trials than --top-k can be explained."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
from cytotune.explainers.job.runner import run_explain

pytestmark = pytest.mark.slow


def test_quality_stage_has_a_progress_bar_and_a_short_top_k_is_said(explained, tmp_path, capsys):
    study, config, plan, _ = explained
    copy = tmp_path / "study"
    shutil.copytree(study, copy)
    top_k = len(plan.trials) + 2
    lines: list[str] = []
    rerun = dataclasses.replace(
        config, study=str(copy), top_k=top_k, stages=("quality",), overwrite=True
    )
    run_explain(rerun, progress=True, log=lines.append)
    tasks = len(plan.trials) * len(config.method_names)
    err = capsys.readouterr().err
    assert "explain quality" in err
    assert f"{tasks}/{tasks}" in err
    assert any(f"top {top_k} asked: only {len(plan.trials)} trial(s)" in line for line in lines)
