"""The default training recipe: batch/LR resolution, one-cycle, label smoothing, mixup / CutMix,
weight EMA, test-time averaging and intensity jitter, against hand-computed references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cytotune.engine.data.augment import AugmentConfig, augment, border_median, row_seeds
from cytotune.engine.train import TrainConfig
from cytotune.engine.train.optim import create_optimizer, create_scheduler
from cytotune.engine.train.recipe import TTA_VIEWS, WeightEMA, mix_batch, tta_views
from torch import nn


def test_defaults_are_the_cell_recipe():
    c = TrainConfig()
    assert (c.optimizer, c.lr, c.weight_decay, c.schedule) == ("adamw", 4e-3, 0.1, "onecycle")
    assert (c.label_smoothing, c.tta, c.batch_size, c.class_weighting) == (
        0.2,
        "dihedral",
        "auto",
        "auto",
    )
    assert c.augment.flip
    assert c.augment.rot90
    assert c.augment.rotate_degrees == 45
    assert c.augment.shift == 0.05
    assert c.augment.intensity == 0.1


def test_rotation_and_shift_fill_with_the_crops_background_not_zero():
    """A raw uint16-like crop sits on a camera offset (500 counts here); what a 45-degree turn or a
    shift brings in from outside the crop is that offset, as a wider field of view would show."""
    images = torch.full((32, 2, 24, 24), 500.0)
    images[:, 1] = 80.0  # a second channel with its own background
    images[:, :, 10:14, 10:14] += 3000.0  # the cell
    config = AugmentConfig(rotate_degrees=45, shift=0.2)
    out = augment(images, row_seeds([f"c{i}" for i in range(32)], 0, 0), config)
    corners = out[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]  # (B, C, 4)
    torch.testing.assert_close(corners[:, 0], torch.full((32, 4), 500.0))
    torch.testing.assert_close(corners[:, 1], torch.full((32, 4), 80.0))
    assert (out[:, 0].amax(dim=(-2, -1)) > 1500).all()  # the cell is still in every crop
    ring = np.concatenate(
        [images[0, 0, 0], images[0, 0, -1], images[0, 0, 1:-1, 0], images[0, 0, 1:-1, -1]]
    )
    assert border_median(images)[0, 0, 0, 0].item() == float(np.median(ring))


@pytest.mark.parametrize(
    "crop, n_train, batch",
    [
        (64, 4100, 256),
        (64, 2600, 128),  # MitoCheck's training split: 16 steps per epoch at least
        (64, 1500, 64),
        (48, 800, 32),
        (96, 5000, 128),
        (224, 5000, 64),
        (32, 100, 16),
    ],
)
def test_auto_batch_and_sqrt_lr_scaling(crop, n_train, batch):
    resolved = TrainConfig(lr=2e-3).resolved(crop, n_train)
    assert resolved.batch_size == batch
    assert resolved.lr == pytest.approx(2e-3 * math.sqrt(batch / 256))
    assert resolved.resolved(crop, n_train) == resolved  # idempotent
    linear = TrainConfig(lr=2e-3, batch_size=64, lr_scaling="linear").resolved(crop, n_train)
    assert linear.lr == pytest.approx(2e-3 / 4)
    assert linear.batch_size == 64


def test_onecycle_matches_torch_reference():
    config = TrainConfig(epochs=4, lr=1e-2, schedule="onecycle")
    ours_model, ref_model = nn.Linear(3, 2), nn.Linear(3, 2)
    ours = create_optimizer(ours_model.parameters(), config)
    ref = torch.optim.AdamW(ref_model.parameters(), lr=1e-2)
    sched = create_scheduler(ours, config, steps_per_epoch=5)
    ref_sched = torch.optim.lr_scheduler.OneCycleLR(ref, max_lr=1e-2, total_steps=20)
    lrs, ref_lrs = [], []
    for _ in range(20):
        lrs.append(ours.param_groups[0]["lr"])
        ref_lrs.append(ref.param_groups[0]["lr"])
        ours.step(), ref.step(), sched.step(), ref_sched.step()
    assert lrs == pytest.approx(ref_lrs)
    assert max(lrs) == pytest.approx(1e-2, rel=0.05)
    assert lrs[0] == pytest.approx(1e-2 / 25)


def test_invalid_recipe_values_name_the_field():
    for field, value in [("label_smoothing", 1.0), ("ema", 1.0), ("mixup", -1), ("tta", "x")]:
        with pytest.raises(ValueError, match=field):
            TrainConfig(**{field: value})
    with pytest.raises((ValueError, TypeError), match="batch_size"):
        TrainConfig(batch_size="big")


def test_tta_views_are_the_eight_dihedral_symmetries():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    outs = {tuple(v(x).flatten().tolist()) for v in tta_views("dihedral", 4, 4)}
    assert len(outs) == 8
    reference = set()
    for k in range(4):
        for flipped in (x, x.flip(3)):
            reference.add(tuple(torch.rot90(flipped, k, (2, 3)).flatten().tolist()))
    assert outs == reference
    assert len(tta_views("flips", 4, 4)) == 3
    assert len(TTA_VIEWS["none"]) == 1
    assert len(tta_views("dihedral", 4, 6)) == 4  # no quarter turns of a non-square crop


def test_mixup_is_a_convex_combination_and_cutmix_area_sets_lambda():
    torch.manual_seed(0)
    x = torch.randn(8, 2, 10, 10)
    y = torch.arange(8)
    mixed, ya, yb, lam = mix_batch(x, y, mixup=0.4, cutmix=0.0)
    partner = x[yb]  # y is the identity, so yb is the permutation
    assert torch.allclose(mixed, lam * x + (1 - lam) * partner, atol=1e-6)
    assert torch.equal(ya, y)
    torch.manual_seed(1)
    mixed, _, yb, lam = mix_batch(x, y, mixup=0.0, cutmix=1.0)
    from_partner = (mixed == x[yb]).all(dim=1) & (mixed != x).any(dim=1)  # (B, H, W)
    changed = (mixed != x).any(dim=1)
    moved = changed.float().mean(dim=(1, 2))
    same_partner = (yb == y).nonzero().flatten()
    others = [i for i in range(8) if i not in same_partner.tolist()]
    assert moved[others] == pytest.approx(torch.full((len(others),), 1 - lam), abs=1e-6)
    assert from_partner[others].sum() == changed[others].sum()


def test_weight_ema_follows_the_hand_computed_average():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = WeightEMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)  # warm-up: d = min(0.5, 1 / 10) = 0.1
    assert torch.allclose(ema.model.weight, torch.full((1, 2), 0.1 * 1 + 0.9 * 3))
    ema.update(model)  # d = min(0.5, 2 / 11)
    d = 2 / 11
    assert torch.allclose(ema.model.weight, torch.full((1, 2), d * 2.8 + (1 - d) * 3))
    for _ in range(20):
        ema.update(model)
    assert ema.updates == 22  # past the warm-up the decay is the configured 0.5
    assert not ema.model.weight.requires_grad


def test_intensity_jitter_scales_each_channel_within_bounds():
    images = torch.ones(64, 3, 8, 8)
    config = AugmentConfig(intensity=0.2)
    out = augment(images, row_seeds([f"c{i}" for i in range(64)], 0, 0), config)
    gains = out[:, :, 0, 0]  # (B, C); constant over pixels
    assert torch.allclose(out, gains[:, :, None, None].expand_as(out))
    assert gains.min() >= 0.8 - 1e-6
    assert gains.max() <= 1.2 + 1e-6
    assert gains.std() > 0.05  # channels and crops get their own gains
    assert not torch.allclose(gains[:, 0], gains[:, 1])


def test_label_smoothing_and_tta_reach_the_fold_trainer(tmp_path):
    """A trainer's loss equals F.cross_entropy with the smoothing; TTA over a model that only
    sees rotation-invariant features gives the plain prediction."""
    from cytotune.engine.data import CellDataset
    from cytotune.engine.data.folds import make_folds
    from cytotune.engine.synth import write_dataset
    from cytotune.engine.train import FoldTrainer, task_spec
    from cytotune.search_spaces import ModelConfig

    write_dataset("metastasis", tmp_path / "d", 96, size=16, seed=0, progress=False)
    dataset = CellDataset(tmp_path / "d")
    train_ids, val_ids = make_folds(dataset, k=3, group="well").split(0)
    config = ModelConfig(
        "small_cnn", 3, task_spec(dataset.manifest), {"filters": 8, "dense_units": 8}
    )
    trainer = FoldTrainer(
        config,
        TrainConfig(epochs=1, label_smoothing=0.2, augment="none"),
        dataset,
        train_ids,
        val_ids,
    )
    batch = next(iter(trainer.train_loader.epoch(0, train=True)))
    x, y, _ = trainer._inputs(batch)
    trainer.model.eval()  # no dropout: both sides see the same logits
    with torch.no_grad():
        expected = F.cross_entropy(trainer.model(x), y, label_smoothing=0.2)
        assert trainer._loss(x, y, None).item() == pytest.approx(expected.item(), rel=1e-5)
    plain = trainer.evaluate(tta=False).outputs
    with_tta = trainer.evaluate(tta=True).outputs
    assert not np.allclose(plain, with_tta)  # the views do change a CNN's logits
    # the reference: logits averaged over the 8 views by hand
    trainer.model.eval()
    logits = []
    with torch.no_grad():
        for b in trainer.val_loader.epoch(0, train=False):
            views = [
                torch.rot90(v, k, (2, 3)) for v in (b.images, b.images.flip(3)) for k in range(4)
            ]
            logits.append(torch.stack([trainer.model(v) for v in views]).mean(0))
    reference = torch.cat(logits).softmax(1).numpy()
    assert np.allclose(with_tta, reference, atol=1e-5)
