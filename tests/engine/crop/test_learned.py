"""The learned finder: targets, painting, group split, and a few CPU training steps via the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cytotune.engine.cli import main
from cytotune.engine.crop import create_finder
from cytotune.engine.crop.learned import paint
from cytotune.engine.crop.train import split_by_group, targets_from_labels
from PIL import Image

from .conftest import disc_field


def test_targets_from_labels_hand_computed():
    labels = np.zeros((10, 12), dtype=np.int32)
    labels[1:4, 2:6] = 3
    labels[6:9, 8:12] = 1
    t = targets_from_labels(labels)
    # Rows follow increasing label id: 1 then 3; boxes are x0, y0, x1, y1 (end exclusive).
    assert t["boxes"].tolist() == [[8, 6, 12, 9], [2, 1, 6, 4]]
    assert t["labels"].tolist() == [1, 1]
    assert t["masks"].shape == (2, 10, 12)
    assert t["masks"][1].sum() == 12
    empty = targets_from_labels(np.zeros((5, 5), dtype=np.int32))
    assert tuple(empty["boxes"].shape) == (0, 4)


def test_paint_keeps_higher_scores_and_drops_duplicates():
    masks = np.zeros((3, 8, 8), dtype=bool)
    masks[0, 0:4, 0:4] = True  # score 0.6
    masks[1, 0:4, 1:5] = True  # score 0.9, overlaps 0 by 12 of 16 px
    masks[2, 6:8, 6:8] = True  # score 0.3: below threshold
    labels = paint(masks, np.array([0.6, 0.9, 0.3]), threshold=0.5)
    assert labels.max() == 1  # mask 0 keeps 4 of 16 px (< half): dropped as a duplicate
    assert (labels == 1).sum() == 16
    assert labels[0, 4] == 1
    assert labels[0, 0] == 0
    boxes = np.array([[0, 0, 4, 4], [1, 0, 5, 4], [6, 6, 8, 8]], dtype=np.float32)
    np.testing.assert_array_equal(paint(masks, np.array([0.6, 0.9, 0.3]), 0.5, boxes=boxes), labels)
    # Lower threshold: the third mask is painted as cell 2.
    assert (paint(masks, np.array([0.6, 0.9, 0.3]), 0.2, boxes=boxes) == 2).sum() == 4


def test_split_by_group_keeps_groups_whole():
    groups = ["a", "a", "b", "c", "c", "d", "e"]
    train, val = split_by_group(groups, 0.4, seed=0)
    assert sorted(train + val) == list(range(7))
    assert {groups[i] for i in train}.isdisjoint({groups[i] for i in val})
    assert len({groups[i] for i in val}) == 2


@pytest.fixture
def one_thread():
    """One torch thread: on a shared 2-core machine two spinning threads run 5x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_train_a_few_steps_on_cpu_then_crop_with_it(tmp_path, one_thread):
    images, truths = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    truths.mkdir()
    for i in range(3):
        image, truth = disc_field((64, 64), [(20, 20), (44, 40)], 7, seed=i)
        Image.fromarray(image).save(images / f"f{i}.png")
        Image.fromarray(truth.astype(np.uint16)).save(truths / f"f{i}.png")
    ckpt = tmp_path / "finder"
    argv = ["crop", "train", str(images), "--truth", str(truths), "--out", str(ckpt),
            "--max-steps", "1", "--batch-size", "2", "--min-size", "64", "--width", "32", "--val-fraction", "0.34",
            "--device", "cpu", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    config = json.loads((ckpt / "config.json").read_text())
    assert config["model"]["backbone"] == "resnet18"
    assert config["split_group"] == "field"
    assert len(config["train_fields"]) == 2
    assert len(config["val_fields"]) == 1
    assert {"f1", "map"} <= set(config["val"])
    field, _ = disc_field((64, 64), [(20, 20)], 7, seed=9)
    a = create_finder("learned", checkpoint=str(ckpt), device="cpu", score_threshold=0.0)
    b = create_finder("learned", checkpoint=str(ckpt), device="cpu", score_threshold=0.0)
    la, lb = a.find(field), b.find(field)
    assert la.shape == (64, 64)
    assert la.dtype == np.int32
    np.testing.assert_array_equal(la, lb)  # the checkpoint alone rebuilds the model
    with pytest.raises(FileNotFoundError, match="crop train"):
        create_finder("learned", checkpoint=str(tmp_path))


def test_a_checkpoint_of_the_other_finder_is_refused_naming_the_right_one(tmp_path):
    import json

    import torch
    from cytotune.engine.crop import create_finder

    seed_dir, learned_dir = tmp_path / "seed", tmp_path / "learned"
    for path, config in ((seed_dir, {"finder": "seed", "model": {}}), (learned_dir, {"model": {}})):
        path.mkdir()
        (path / "config.json").write_text(json.dumps(config))
        torch.save({}, path / "weights.pt")
    with pytest.raises(ValueError, match="holds a 'seed' finder checkpoint; use --finder seed"):
        create_finder("learned", checkpoint=str(seed_dir), device="cpu")
    with pytest.raises(
        ValueError, match="holds a 'learned' finder checkpoint; use --finder learned"
    ):
        create_finder("seed", checkpoint=str(learned_dir), device="cpu")
