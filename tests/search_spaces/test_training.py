"""A short CPU training run of every family beats chance on learnable synthetic cells."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cytotune.search_spaces.models import create_model, list_models

from ._train import evaluate, fit, normalise
from .conftest import tiny

N_TRAIN, N_TEST, SIZE, EPOCHS = 256, 128, 32, 10


def _toy_cells(n: int, size: int, seed: int = 0):
    """Fallback when engine.synth is absent: a bright blob in channel ``label`` of 3."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    yy, xx = np.mgrid[:size, :size]
    images = rng.poisson(200, size=(n, 3, size, size)).astype(np.uint16)
    masks = np.zeros((n, size, size), np.uint8)
    for i, label in enumerate(labels):
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < (size // 5) ** 2
        masks[i] = disc
        images[i, label][disc] += 800
        images[i, 2][disc] += 400
    return images, labels, masks


@pytest.fixture(scope="module")
def cells():
    """Metastasis-task cells (DNA, actin, vimentin) from cytotune.engine.synth, normalised."""
    try:
        from cytotune.engine.synth import render
    except ImportError:
        images, labels, masks = _toy_cells(N_TRAIN + N_TEST, SIZE)
    else:
        batch = render("metastasis", N_TRAIN + N_TEST, size=SIZE, seed=0)
        images, labels, masks = batch.images, batch.label_indices, batch.masks
    x = normalise(images)
    mask = torch.from_numpy(masks.astype(np.float32))
    y = torch.from_numpy(np.asarray(labels))
    # Two continuous targets: mean vimentin (channel 2) in the cell, and cell area.
    area = mask.mean((1, 2))
    vimentin = (x[:, 2] * mask).sum((1, 2)) / mask.sum((1, 2)).clamp_min(1)
    reg = torch.stack([vimentin, area], 1)
    reg = (reg - reg.mean(0)) / reg.std(0)
    return x, y, reg, mask


def split(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return t[:N_TRAIN], t[N_TRAIN:]


@pytest.mark.parametrize("family", list_models())
def test_classification_beats_chance(cells, family):
    x, y, _, mask = cells
    model = create_model(family, in_chans=3, task="binary", **tiny(family))
    (x_tr, x_te), (y_tr, y_te), (m_tr, m_te) = split(x), split(y), split(mask)
    losses = fit(model, x_tr, y_tr, m_tr, epochs=EPOCHS)
    metrics = evaluate(model, x_te, y_te, m_te if family == "protopnet" else None)
    assert losses[-1] < losses[0]
    assert metrics["accuracy"] >= 0.7, metrics  # chance: 0.5 (balanced classes)
    if family == "protopnet":  # pushed after the last epoch
        assert all(src is not None for src in model.prototype_sources)


@pytest.mark.parametrize("family", list_models())
def test_regression_beats_the_mean(cells, family):
    x, _, reg, mask = cells
    slow = family == "protopnet"  # regressing from max-pooled prototype similarities is slower
    extra = {"last_layer_epochs": 4} if slow else {}
    model = create_model(
        family,
        in_chans=3,
        task="regression",
        num_outputs=2,
        target_names=["vimentin", "area"],
        **tiny(family, **extra),
    )
    (x_tr, x_te), (r_tr, r_te), (m_tr, m_te) = split(x), split(reg), split(mask)
    fit(model, x_tr, r_tr, m_tr, epochs=EPOCHS, lr=1e-2 if slow else 3e-3)
    metrics = evaluate(model, x_te, r_te, m_te if family == "protopnet" else None)
    assert metrics["r2"] > 0.1, metrics  # predicting the mean gives R^2 = 0
