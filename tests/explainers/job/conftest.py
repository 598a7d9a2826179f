from __future__ import annotations

import shutil

import pytest

from ._study import make_study

METHODS = ("gradcam", "saliency", "integrated_gradients:n_steps=8")


@pytest.fixture(scope="session")
def trained_study(tmp_path_factory):
    """A real study (small CNN, MHL attention, ProtoPNet; 3 folds by well) at 32 px."""
    return make_study(
        tmp_path_factory.mktemp("explain"), ("small_cnn", "mhl_attention", "protopnet"), n=150
    )


@pytest.fixture(scope="session")
def explained(trained_study, tmp_path_factory):
    """The study after one full `cytotune explain` run (a copy, so tests can also start fresh)."""
    from cytotune.explainers.job.config import ExplainConfig
    from cytotune.explainers.job.runner import run_explain

    study = tmp_path_factory.mktemp("explained") / "study"
    shutil.copytree(trained_study, study)
    config = ExplainConfig(
        study=str(study), top_k=3, methods=METHODS, quality_cells=16, overlays=4, batch_size=64
    )
    plan, state = run_explain(config, progress=False, log=lambda *_: None)
    return study, config, plan, state
