"""On synthetic cells, a trained model's Grad-CAM lands on the class evidence; random weights' do not."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cytotune.engine.synth import render
from cytotune.explainers import (
    create_explainer,
    mass_inside,
    randomisation_check,
    randomize_weights,
)
from cytotune.explainers.job.worker import cam_layers
from cytotune.search_spaces import ModelConfig
from cytotune.search_spaces.models import create_model

sys.path.insert(0, str(Path(__file__).parents[1] / "search_spaces"))
from _train import fit, normalise  # noqa: E402

pytestmark = pytest.mark.slow


def test_trained_gradcam_is_on_the_evidence_and_random_weights_are_not():
    torch.manual_seed(0)
    n_train = 512
    # shape_difference=0: the classes differ only in the cytoskeleton (the evidence mask)
    cells = render("metastasis", n_train + 128, size=64, seed=10, shape_difference=0.0)
    x, y = normalise(cells.images), torch.tensor(cells.label_indices)
    config = ModelConfig.from_sample(
        {
            "family": "backbone",
            "backbone": {"timm_kwargs": {"channels": [8, 16, 32, 64], "stem_width": 8}},
        },
        in_chans=3,
        task="binary",
        num_outputs=2,
    )
    model = create_model(config)
    fit(model, x[:n_train], y[:n_train], epochs=10, lr=3e-3, seed=0)
    model.eval()
    xs, ys, evidence = x[n_train:], y[n_train:], cells.evidence[n_train:]
    assert (model(xs).argmax(1) == ys).float().mean() > 0.9
    layer = cam_layers(model, (3, 64, 64))[-1]  # the job's default: layer3 (4x4 at 64 px)
    assert layer == "backbone.layer3"
    random = randomize_weights(model, seed=0, mode="full").eval()
    trained_maps = create_explainer("gradcam", model, layer).attribute(xs, target=ys)
    random_maps = create_explainer("gradcam", random, layer).attribute(xs, target=ys)
    trained_mass = np.nanmean(mass_inside(trained_maps, evidence))
    random_mass = np.nanmean(mass_inside(random_maps, evidence))
    area = evidence.reshape(len(evidence), -1).mean()
    assert trained_mass > 1.4 * random_mass, (trained_mass, random_mass)
    assert trained_mass > 1.5 * area  # well above what a uniform map would put there
    check = randomisation_check(trained_maps, random_maps)
    assert check["passed"], check["spearman_mean"]
