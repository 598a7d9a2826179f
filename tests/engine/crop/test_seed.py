"""The seed's finder: K-means++ anchors, GIoU, the merge rule, Otsu masks, training, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cytotune.engine.cli import main
from cytotune.engine.crop import create_finder
from cytotune.engine.crop.metrics import iou_matrix
from cytotune.engine.crop.seed import (
    box_mask,
    giou,
    kmeans_anchors,
    mask_boxes,
    merge_boxes,
    otsu_mask,
    save_checkpoint,
    wh_iou,
)
from cytotune.engine.crop.seed_train import (
    SeedTrainOptions,
    assign,
    choose_threshold,
    label_boxes,
    train_seed_model,
)
from PIL import Image

from .conftest import disc_field


@pytest.fixture
def one_thread():
    """One torch thread: on a shared 2-core machine two spinning threads run 5x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_wh_iou_hand_computed():
    # (2, 4) vs (4, 2) on one centre: overlap 2 x 2 = 4, union 8 + 8 - 4 = 12.
    np.testing.assert_allclose(wh_iou([[2, 4]], [[4, 2], [2, 4]]), [[1 / 3, 1.0]])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_kmeans_anchors_hand_computed(seed):
    small = [(4, 4), (4, 5), (5, 4)]
    large = [(40, 40), (40, 44), (44, 40)]
    anchors = kmeans_anchors(np.array(large + small), 2, seed=seed)
    # Two clusters far apart (1 - IoU ~ 0.99 across, <= 0.2 within): centres are their means,
    # returned by increasing area.
    np.testing.assert_allclose(anchors, [[13 / 3, 13 / 3], [124 / 3, 124 / 3]])
    # k = 1: one cluster, its mean.
    np.testing.assert_allclose(kmeans_anchors(np.array(small), 1), [[13 / 3, 13 / 3]])
    with pytest.raises(ValueError, match="at least k=3"):
        kmeans_anchors(np.array(small[:2]), 3)


def test_giou_matches_torchvision():
    from torchvision.ops import generalized_box_iou

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, (64, 2, 2))
    wh = rng.uniform(1, 30, (64, 2, 2))
    a = torch.tensor(np.concatenate([xy[:, 0], xy[:, 0] + wh[:, 0]], 1), dtype=torch.float64)
    b = torch.tensor(np.concatenate([xy[:, 1], xy[:, 1] + wh[:, 1]], 1), dtype=torch.float64)
    expected = torch.diagonal(generalized_box_iou(a, b))
    torch.testing.assert_close(giou(a, b), expected)
    torch.testing.assert_close(giou(a, a), torch.ones(64, dtype=torch.float64))


def test_merge_rule_on_hand_made_boxes():
    boxes = np.array(
        [
            [0, 0, 10, 10],  # 0: score 0.9
            [1, 1, 11, 11],  # 1: IoU with 0 = 81 / 119 > 0.5 -> merged into 0
            [30, 30, 40, 40],  # 2: alone
            [50, 50, 80, 80],  # 3: score 0.7
            [62, 62, 68, 68],  # 4: IoU with 3 = 36 / 900, same centre -> merged by distance
            [0, 20, 10, 30],  # 5: touches 6; centres 10 px apart, sizes 10 -> kept apart
            [10, 20, 20, 30],  # 6
        ],
        dtype=float,
    )
    scores = np.array([0.9, 0.6, 0.8, 0.7, 0.5, 0.4, 0.3])
    merged, kept = merge_boxes(boxes, scores, iou_threshold=0.5, centre_fraction=0.5)
    np.testing.assert_allclose(kept, [0.9, 0.8, 0.7, 0.4, 0.3])
    np.testing.assert_allclose(merged[0], [0.4, 0.4, 10.4, 10.4])  # (0.9 b0 + 0.6 b1) / 1.5
    np.testing.assert_allclose(merged[1], boxes[2])
    np.testing.assert_allclose(merged[2], (0.7 * boxes[3] + 0.5 * boxes[4]) / 1.2)
    np.testing.assert_allclose(merged[3:], boxes[5:])
    # Plain NMS-like settings (no distance rule) keep the nested box 4 apart.
    assert len(merge_boxes(boxes, scores, iou_threshold=0.5, centre_fraction=0.0)[0]) == 6
    assert merge_boxes(np.zeros((0, 4)), np.zeros(0))[0].shape == (0, 4)


@pytest.mark.parametrize("seed", [0, 1])
def test_otsu_mask_matches_scikit_image(seed):
    from skimage.filters import threshold_otsu

    rng = np.random.default_rng(seed)
    values = np.concatenate([rng.normal(0.2, 0.05, 700), rng.normal(0.7, 0.1, 300)]).reshape(40, 25)
    ours, theirs = otsu_mask(values), values > threshold_otsu(values)
    # Same threshold bin; scikit-image also keeps the upper half of that bin.
    assert (ours != theirs).mean() < 0.01
    assert not (ours & ~theirs).any()
    assert not otsu_mask(np.ones((4, 4))).any()


def test_box_mask_on_a_synthetic_disc():
    image, truth = disc_field((48, 48), [(20, 22), (40, 42)], [8, 3], seed=1)
    field = image.astype(np.float32) / 255
    # A box around disc 1 that also clips the small disc 2: the largest component wins.
    ys, xs, mask = box_mask(field, (13, 11, 45, 45), margin=0.0)
    full = np.zeros(field.shape, dtype=bool)
    full[ys, xs] = mask
    disc = truth == 1
    assert (full & disc).sum() / (full | disc).sum() > 0.95
    assert not (full & (truth == 2)).any()
    assert box_mask(np.zeros((10, 10), np.float32), (2, 2, 6, 6)) is None
    labels = mask_boxes(field, np.array([[13, 11, 32, 30], [36, 36, 46, 46]]), np.array([0.9, 0.8]))
    iou = iou_matrix(truth, labels)
    assert iou.shape == (2, 2)
    assert np.diag(iou).min() > 0.8


def test_assign_centre_cell_and_nearest_neighbours():
    anchors = torch.tensor([[[10.0, 10.0]], [[40.0, 40.0]]])  # one anchor per stride
    boxes = [torch.tensor([[14.0, 14.0, 24.0, 26.0]])]  # 10 x 12, centre (19, 20)
    (index8, true8), (index16, true16) = assign(boxes, anchors, [(8, 8), (4, 4)])
    # Stride 8: centre cell (x 2, y 2), fractions (0.375, 0.5): nearer x neighbour 1, y 3.
    b, a, gy, gx = (t.tolist() for t in index8)
    assert sorted(zip(gy, gx)) == [(2, 1), (2, 2), (3, 2)]
    assert b == [0, 0, 0]
    assert a == [0, 0, 0]
    assert true8.tolist() == [[14, 14, 24, 26]] * 3
    assert len(true16) == 0  # 40 / 10 = 4 is not below the ratio 4
    np.testing.assert_array_equal(
        label_boxes(np.pad(np.ones((3, 4), np.int32), ((1, 0), (2, 0)))), [[2, 1, 6, 4]]
    )


def _disc_items(n, size=96, seed=0):
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        centres = [tuple(int(v) for v in c) for c in rng.integers(10, size - 10, (6, 2))]
        items.append(disc_field((size, size), centres, 6, seed=i))
    return items


def test_tiny_training_lowers_the_loss_and_the_checkpoint_finds_cells(tmp_path, one_thread):
    items = _disc_items(4)
    options = SeedTrainOptions(
        epochs=40, max_steps=40, batch_size=4, lr=1e-2, warmup_steps=5, crop_size=96,
        widths=(8, 16, 32, 32), depths=(1, 1, 1, 1), head=32, anchors_per_level=2, device="cpu",
    )  # fmt: skip
    model, history = train_seed_model(items, options, progress=False)
    losses = [h["loss"] for h in history]
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    config = {"finder": "seed", "model": options.model_args(model.anchors.view(-1, 2).numpy())}
    finder = create_finder("seed", model=model, config=config, device="cpu")
    threshold, table = choose_threshold(finder, items)
    assert table[str(threshold)]["f1"] >= 0.8
    ckpt = tmp_path / "seed"
    save_checkpoint(model, ckpt, {**config, "score_threshold": threshold})
    loaded = create_finder("seed", checkpoint=str(ckpt), device="cpu")
    assert loaded.score_threshold == threshold
    for (image, _), a, b in zip(
        items, finder.find_many([i for i, _ in items]), loaded.find_many([i for i, _ in items])
    ):
        np.testing.assert_array_equal(a, b)  # the checkpoint alone rebuilds the model
        assert a.dtype == np.int32
        assert a.shape == image.shape
    with pytest.raises(FileNotFoundError, match="--model seed"):
        create_finder("seed", checkpoint=str(tmp_path))
    (ckpt / "config.json").write_text(json.dumps({"model": {"backbone": "resnet18"}}))
    with pytest.raises(ValueError, match="'learned' finder checkpoint"):
        create_finder("seed", checkpoint=str(ckpt))


def test_crop_train_model_seed_via_the_cli(tmp_path, one_thread):
    images, truths = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    truths.mkdir()
    for i, (image, truth) in enumerate(_disc_items(3, size=64)):
        Image.fromarray(image).save(images / f"f{i}.png")
        Image.fromarray(truth.astype(np.uint16)).save(truths / f"f{i}.png")
    ckpt = tmp_path / "finder"
    argv = ["crop", "train", str(images), "--truth", str(truths), "--out", str(ckpt), "--model", "seed",
            "--max-steps", "2", "--batch-size", "2", "--crop-size", "64", "--val-fraction", "0.34",
            "--device", "cpu", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    config = json.loads((ckpt / "config.json").read_text())
    assert config["finder"] == "seed"
    assert np.shape(config["model"]["anchors"]) == (6, 2)
    assert len(config["train_fields"]) == 2
    assert len(config["val_fields"]) == 1
    assert {"f1", "map"} <= set(config["val"])
    labels = create_finder("seed", checkpoint=str(ckpt), device="cpu").find(
        _disc_items(1, 64)[0][0]
    )
    assert labels.shape == (64, 64)
    assert labels.dtype == np.int32
    out = tmp_path / "cells"
    argv = ["crop", str(images), "--out", str(out), "--finder", "seed", "--checkpoint", str(ckpt),
            "--finder-arg", "score_threshold=0.0", "--size", "16", "--workers", "1", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    provenance = json.loads((out / "manifest.json").read_text())
    assert "seed" in json.dumps(provenance)


@pytest.mark.parametrize(
    ("model", "flag", "owner"),
    [
        ("seed", "--width", "learned"),
        ("seed", "--min-size", "learned"),
        ("learned", "--crop-size", "seed"),
        ("seed", "--mask-threshold", "learned"),
    ],
)
def test_crop_train_refuses_the_other_finders_options(tmp_path, capsys, model, flag, owner):
    """An option of the other finder is refused by name, not silently ignored."""
    argv = ["crop", "train", str(tmp_path), "--truth", str(tmp_path), "--out", str(tmp_path / "f"),
            "--model", model, flag, "64"]  # fmt: skip
    assert main(argv) == 2
    assert f"{flag} only apply to `--model {owner}`" in capsys.readouterr().err
