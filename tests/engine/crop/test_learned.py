"""The learned finder: targets, painting, group split, and a few CPU training steps via the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cytotune.engine.cli import main
from cytotune.engine.crop import create_finder
from cytotune.engine.crop.learned import Detections
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


def test_painting_keeps_higher_scores_and_drops_duplicates():
    probs = np.full((3, 8, 8), 0.1)
    probs[0, 0:4, 1:5] = 0.9  # score 0.9
    probs[1, 0:4, 0:4] = 0.9  # score 0.6, overlaps the first by 12 of 16 px
    probs[2, 6:8, 6:8] = 0.9  # score 0.3
    boxes = [[1, 0, 5, 4], [0, 0, 4, 4], [6, 6, 8, 8]]
    found = Detections.from_prediction(_prediction(probs, [0.9, 0.6, 0.3], boxes), (8, 8), 0.0)
    labels = found.labels(0.5)
    assert labels.max() == 1  # the second keeps 4 of 16 px (< half): dropped as a duplicate
    assert (labels == 1).sum() == 16
    assert labels[0, 4] == 1
    assert labels[0, 0] == 0
    assert (found.labels(0.2) == 2).sum() == 4  # a lower threshold paints the third as cell 2


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


def _labelled_fields(root):
    """Three 64 px fields of two discs each, with their instance label images: (images, labels)."""
    images, truths = root / "images", root / "labels"
    images.mkdir()
    truths.mkdir()
    for i in range(3):
        image, truth = disc_field((64, 64), [(20, 20), (44, 40)], 7, seed=i)
        Image.fromarray(image).save(images / f"f{i}.png")
        Image.fromarray(truth.astype(np.uint16)).save(truths / f"f{i}.png")
    return images, truths


def test_train_a_few_steps_on_cpu_then_crop_with_it(tmp_path, one_thread):
    images, truths = _labelled_fields(tmp_path)
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


def _prediction(probs: np.ndarray, scores, boxes) -> dict:
    import torch

    return {
        "masks": torch.from_numpy(probs[:, None].astype(np.float32)),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "boxes": torch.tensor(boxes, dtype=torch.float32),
    }


def _painted(masks, scores, boxes, threshold, margin=2):
    """Reference on whole fields: highest score first, each mask cut to its box + ``margin`` px,
    painted where no cell is yet unless that keeps less than half of it."""
    labels = np.zeros(masks.shape[1:], np.int32)
    for i in np.argsort(-np.asarray(scores), kind="stable"):
        if scores[i] < threshold:
            break
        x0, y0, x1, y1 = boxes[i]
        inside = np.zeros_like(masks[i])
        inside[max(y0 - margin, 0) : y1 + margin, max(x0 - margin, 0) : x1 + margin] = True
        m = masks[i] & inside
        free = m & (labels == 0)
        if m.sum() and free.sum() >= 0.5 * m.sum():
            labels[free] = labels.max() + 1
    return labels


def test_detections_paint_like_a_whole_field_reference_at_any_threshold():
    from cytotune.engine.crop.learned import Detections

    probs = np.full((3, 12, 12), 0.1)
    probs[0, 1:6, 1:6] = 0.8  # score 0.9
    probs[1, 1:6, 3:8] = 0.8  # score 0.6: overlaps 0 by 15 of 25 px, a duplicate
    probs[2, 7:11, 7:11] = 0.55  # score 0.4, a faint mask
    probs[2, 8:10, 8:10] = 0.95
    scores, boxes = [0.6, 0.9, 0.4], [[3, 1, 8, 6], [1, 1, 6, 6], [7, 7, 11, 11]]
    order = [1, 0, 2]  # the class sorts by score itself
    found = Detections.from_prediction(_prediction(probs[order], scores, boxes), (12, 12), 0.3)
    assert found.scores.tolist() == pytest.approx([0.9, 0.6, 0.4])
    for score_t in (0.3, 0.5, 0.95):
        for mask_t in (0.5, 0.7):
            expected = _painted(probs[order] > mask_t, scores, boxes, score_t)
            np.testing.assert_array_equal(found.labels(score_t, mask_t), expected)
    assert (found.labels(0.3, 0.5) == 2).sum() == 16  # the faint cell whole
    assert (found.labels(0.3, 0.7) == 2).sum() == 4  # only its bright core
    assert found.labels(0.5, 0.5).max() == 1  # the duplicate dropped, the faint cell below 0.5
    again = Detections.from_arrays(dict(np.load(_saved(found.arrays()))))  # saved and read back
    np.testing.assert_array_equal(again.labels(0.3, 0.7), found.labels(0.3, 0.7))


def _saved(arrays: dict):
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    buffer.seek(0)
    return buffer


def test_crop_train_chooses_thresholds_on_validation_fields(tmp_path, one_thread):
    from cytotune.engine.crop.learned import MASK_GRID, SCORE_GRID, threshold_rank

    images, truths = _labelled_fields(tmp_path)
    base = ["crop", "train", str(images), "--truth", str(truths), "--max-steps", "1",
            "--batch-size", "2", "--min-size", "64", "--width", "32", "--val-fraction", "0.34",
            "--device", "cpu", "--quiet"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    grid = config["threshold_grid"]
    assert len(grid) == len(SCORE_GRID) * len(MASK_GRID)
    best = max(grid, key=threshold_rank)
    chosen = (config["score_threshold"], config["mask_threshold"])
    assert chosen == (best["score_threshold"], best["mask_threshold"])
    assert config["val"]["map"] == pytest.approx(best["map"])  # scored at the chosen thresholds
    finder = create_finder("learned", checkpoint=str(tmp_path / "a"), device="cpu")
    assert (finder.score_threshold, finder.mask_threshold) == chosen
    assert main([*base, "--out", str(tmp_path / "b"), "--score-threshold", "0.7"]) == 0
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert {r["score_threshold"] for r in config["threshold_grid"]} == {0.7}
    assert config["score_threshold"] == 0.7
    with pytest.raises(ValueError, match="mask_threshold must be within"):
        create_finder("learned", checkpoint=str(tmp_path / "a"), mask_threshold=1.5)


def test_bench_cross_fits_thresholds_on_the_other_folds():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[3] / "bench" / "crop.py"
    spec = importlib.util.spec_from_file_location("bench_crop", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def row(fold, score_t, tp, n_pred, map_):
        return {"fold": fold, "score_threshold": score_t, "mask_threshold": 0.5,
                "precision": tp / n_pred, "predicted_objects": n_pred, "true_objects": 10,
                "fields": 2, "map": map_, "f1": 2 * tp / (10 + n_pred)}  # fmt: skip

    # Ranked by F1 + mAP. Fold 0's own best is 0.3 (1.8 vs 1.07), but on folds 1 and 2 0.7 wins
    # (1.15 vs 0.85); fold 2 sees folds 0 and 1, where 0.3 wins (1.27 vs 0.83).
    rows = [row(0, 0.3, 9, 10, 0.9), row(0, 0.7, 5, 5, 0.4),
            row(1, 0.3, 5, 12, 0.3), row(1, 0.7, 4, 9, 0.2),
            row(2, 0.3, 6, 12, 0.4), row(2, 0.7, 8, 8, 0.8)]  # fmt: skip
    tuned = bench.with_tuned(rows)["tuned"]
    picked = {r["fold"]: r["score_threshold"] for r in tuned["folds"]}
    assert picked == {0: 0.7, 1: 0.7, 2: 0.3}  # fold 1 sees 0 and 2: 1.39 vs 1.36
    assert tuned["pooled"]["map"] == pytest.approx((0.4 + 0.2 + 0.4) / 3)
    assert tuned["pooled"]["f1"] == pytest.approx(2 * 15 / (30 + 26))
    rows[2], rows[4] = row(1, 0.3, 8, 9, 0.9), row(2, 0.3, 8, 8, 0.9)  # now 0.3 wins elsewhere
    picked = {r["fold"]: r["score_threshold"] for r in bench.with_tuned(rows)["tuned"]["folds"]}
    assert picked == {0: 0.3, 1: 0.3, 2: 0.3}


def test_prefilter_keeps_the_same_cells_and_restores_the_model(one_thread):
    import torch
    from cytotune.engine.crop.learned import LearnedFinder, build_model

    torch.manual_seed(0)
    model = build_model(width=16, min_size=64, max_size=64, detections=64)
    finder = LearnedFinder(model=model, config={}, device="cpu", batch_size=2)
    fields = [disc_field((64, 64), [(20, 20), (44, 40)], 7, seed=i)[0] for i in range(2)]
    finder.prefilter = False
    everything = np.concatenate([d.scores for d in finder.detections(fields, 0.0)])
    # half the boxes fall under the median; under torchvision's own 0.05 its cut stays
    for floor in (float(np.median(everything)), 0.01):
        found = {}
        for prefilter in (False, True):
            finder.prefilter = prefilter
            found[prefilter] = finder.detections(fields, floor)
            assert model.roi_heads.score_thresh == pytest.approx(0.05)  # torchvision's, restored
        for a, b in zip(found[False], found[True]):
            np.testing.assert_array_equal(a.scores, b.scores)
            np.testing.assert_array_equal(a.labels(floor, 0.5), b.labels(floor, 0.5))
    kept = sum(len(d.scores) for d in finder.detections(fields, float(np.median(everything))))
    assert 0 < kept < len(everything)


def test_crop_takes_thresholds_for_trained_finders_only(tmp_path, capsys):
    argv = ["crop", str(tmp_path), "--out", str(tmp_path / "d"), "--score-threshold", "0.6"]
    assert main(argv) == 2  # the classical finder scores nothing
    assert "--score-threshold does not apply to --finder classical" in capsys.readouterr().err
    argv = ["crop", str(tmp_path), "--out", str(tmp_path / "d"), "--finder", "seed",
            "--checkpoint", str(tmp_path), "--mask-threshold", "0.6"]  # fmt: skip
    assert main(argv) == 2
    assert "--mask-threshold does not apply to --finder seed" in capsys.readouterr().err


def test_threshold_grids_score_a_fixed_ordered_subset_of_fields():
    from cytotune.engine.crop.train import fixed_subset

    items = list(range(300))
    picked = fixed_subset(items, 128)
    assert len(picked) == 128
    assert picked == sorted(picked)  # in the fields' order
    assert picked == fixed_subset(items, 128)  # the same subset every time
    assert fixed_subset(items[:50], 128) == items[:50]
    assert fixed_subset(items, None) == items
