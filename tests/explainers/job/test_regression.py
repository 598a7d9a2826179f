"""The explain job on a two-target regression study: one map per cell and target."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from cytotune.engine.data.augment import normalize
from cytotune.engine.data.dataset import CellDataset
from cytotune.engine.train.checkpoint import load_model
from cytotune.explainers.job.config import ExplainConfig
from cytotune.explainers.job.layout import explain_dir, maps_path, read_maps
from cytotune.explainers.job.runner import run_explain

from tests.studies import make_study, regression_dataset, sample

pytestmark = pytest.mark.slow


def test_regression_targets_are_explained_one_by_one(tmp_path):
    dataset = regression_dataset(tmp_path / "reg", n=48)
    study = make_study(tmp_path / "studies", dataset, {"reg": sample("small_cnn")}, "r2", "k2")
    config = ExplainConfig(
        study=str(study), top_k=1, methods=("saliency",), quality_cells=8, overlays=3
    )
    plan, state = run_explain(config, progress=False, log=lambda *_: None)
    assert not state.data["failures"]
    frame = read_maps(maps_path(study, "reg", "saliency")).to_pandas()
    assert len(frame) == 2 * len(plan.cells)  # every cell once per target
    assert sorted(frame["label"].unique()) == ["area", "vimentin"]
    assert (frame["label_index"] == -1).all()
    assert not frame["correct"].any()
    data = CellDataset(dataset)
    meta = data.metadata().set_index("cell_id")
    for t, name in enumerate(["vimentin", "area"]):
        part = frame[frame["target_index"] == t]
        np.testing.assert_allclose(part["true_value"], meta.loc[part["cell_id"], name], rtol=1e-6)
        np.testing.assert_allclose(
            part["abs_error"], np.abs(part["predicted_value"] - part["true_value"]), rtol=1e-5
        )
    # predictions equal the fold model's outputs
    first = frame[frame["fold"] == 0].head(5)
    rows = plan.cells.set_index("cell_id").loc[first["cell_id"], "row"].to_numpy()
    model, cfg = load_model(plan.trials[0].fold_dirs[0])
    norm = cfg["data"]["normalization"]
    x = normalize(
        torch.from_numpy(data.images(rows).astype(np.float32)),
        torch.tensor(norm["offset"]),
        torch.tensor(norm["scale"]),
    )
    with torch.no_grad():
        out = model(x).numpy()
    np.testing.assert_allclose(
        first["predicted_value"], out[:, first["target_index"].iloc[0]], rtol=1e-4
    )
    population = pd.read_parquet(explain_dir(study) / "population.parquet")
    assert set(population["class"]) == {"all"}
    assert population["n"].iloc[0] == len(plan.cells)
    overlays = pd.read_parquet(explain_dir(study) / "overlays.parquet")
    assert len(overlays) == 3
    quality = pd.read_parquet(explain_dir(study) / "quality.parquet")
    assert {"deletion_auc", "randomisation_passed", "mass_cell"} <= set(quality["metric"])
