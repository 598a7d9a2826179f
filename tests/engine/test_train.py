"""cytotune.engine.train: config validation, LR schedule, class weights, learning, resume, checkpoints."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cytotune.engine.data import CellDataset
from cytotune.engine.data.folds import make_folds
from cytotune.engine.train import FoldTrainer, TrainConfig, WarmupCosine, load_model, task_spec
from cytotune.search_spaces import ModelConfig

TINY_TIMM = {"channels": [8, 8, 16, 16], "stem_width": 8}
TINY = {
    "small_cnn": {"filters": 16, "dense_units": 32, "dropout": 0.0},
    "backbone": {"timm_kwargs": TINY_TIMM},
    "protopnet": {
        "timm_kwargs": TINY_TIMM,
        "prototypes_per_class": 3,
        "prototype_dim": 16,
        "warmup_epochs": 1,
        "push_start": 2,
        "push_every": 1,
        "last_layer_epochs": 1,
    },
}


PLAIN = {
    "schedule": "cosine",
    "lr_scaling": "none",
    "label_smoothing": 0.0,
    "tta": "none",
    "augment": "none",
    "weight_decay": 1e-4,
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """384 metastasis cells at 32 px (balanced, with masks) and fold 0 of a 3-fold well split."""
    from cytotune.engine.synth import write_dataset

    path = tmp_path_factory.mktemp("train") / "metastasis"
    write_dataset("metastasis", path, 384, size=32, seed=0, progress=False)
    dataset = CellDataset(path)
    train_ids, val_ids = make_folds(dataset, k=3, group="well").split(0)
    return dataset, train_ids, val_ids


def model_config(dataset, family: str, **overrides) -> ModelConfig:
    return ModelConfig(family, 3, task_spec(dataset.manifest), {**TINY[family], **overrides})


def trainer(data, family="small_cnn", model_args=None, **train):
    dataset, train_ids, val_ids = data
    # the mechanics tested here predate the cell recipe: pin them (the recipe: test_recipe.py)
    settings = {"epochs": 3, "lr": 3e-3, "batch_size": 32, **PLAIN, **train}
    return FoldTrainer(
        model_config(dataset, family, **(model_args or {})),
        TrainConfig(**settings),
        dataset,
        train_ids,
        val_ids,
    )


# ------------------------------------------------------------------------------ config
@pytest.mark.parametrize(
    ("settings", "error", "words"),
    [
        ({"optimizer": "adamx"}, ValueError, ["adamx", "adam"]),
        ({"precision": "fp16"}, ValueError, ["fp16", "bf16"]),
        ({"lr": 0.0}, ValueError, ["lr", "> 0"]),
        (
            {"warmup_epochs": 5, "epochs": 3, "schedule": "cosine"},
            ValueError,
            ["warmup_epochs", "epochs=3"],
        ),
        ({"momentum": 1.0}, ValueError, ["momentum"]),
        ({"grad_clip": -1.0}, ValueError, ["grad_clip"]),
        ({"augment": "heavy"}, ValueError, ["heavy", "standard"]),
        ({"lr": "fast"}, TypeError, ["lr", "fast"]),
        ({"channels_last": "yes"}, TypeError, ["channels_last"]),
    ],
)
def test_config_rejects_bad_values(settings, error, words):
    with pytest.raises(error) as info:
        TrainConfig(**settings)
    for word in words:
        assert word in str(info.value)


def test_config_from_sample():
    sample = {"family": "small_cnn", "small_cnn": {}, "train": {"lr": 0.01, "batch_size": 32}}
    config = TrainConfig.from_sample(sample["train"], epochs=7, augment="standard")
    assert (config.lr, config.batch_size, config.epochs) == (0.01, 32, 7)
    assert config.augment.flip
    assert config.augment.rotate_degrees == 15
    assert TrainConfig.from_sample(sample) == TrainConfig(lr=0.01, batch_size=32)
    assert TrainConfig.from_dict(config.to_dict()) == config  # JSON round trip
    with pytest.raises(ValueError, match=r"unknown training setting.*'learning_rate'.*'lr'"):
        TrainConfig.from_sample({"learning_rate": 0.1})
    with pytest.raises(ValueError, match="'epoch'"):
        TrainConfig.from_sample({}, epoch=3)


def test_trainer_rejects_mismatched_model(data):
    dataset, train_ids, val_ids = data
    wrong = ModelConfig("small_cnn", 4, task_spec(dataset.manifest), TINY["small_cnn"])
    with pytest.raises(ValueError, match="in_chans=3"):
        FoldTrainer(wrong, TrainConfig(), dataset, train_ids, val_ids)
    wrong = ModelConfig("small_cnn", 3, "multiclass", TINY["small_cnn"]).replace(
        task={"kind": "multiclass", "num_outputs": 3}
    )
    with pytest.raises(ValueError, match="num_outputs=2"):
        FoldTrainer(wrong, TrainConfig(), dataset, train_ids, val_ids)


# ------------------------------------------------------------------------------ schedule
def test_warmup_cosine_by_hand():
    # lr 0.1, 5 warm-up steps, 20 steps in all, floor 0.1 * lr
    schedule = WarmupCosine(warmup_steps=5, total_steps=20, min_ratio=0.1)
    lr = [0.1 * schedule(s) for s in range(20)]
    expected = {0: 0.02, 2: 0.06, 4: 0.1, 5: 0.1, 10: 0.0775, 15: 0.0325}
    for step, value in expected.items():
        assert lr[step] == pytest.approx(value), step
    assert lr[19] > 0.01
    assert 0.1 * schedule(20) == pytest.approx(0.01)


def test_trainer_steps_the_schedule_per_batch(data):
    t = trainer(data, epochs=4, warmup_epochs=0.5, lr=0.2, min_lr_ratio=0.05)
    steps = len(t.train_loader)  # 256 training cells // 32 with drop_last
    assert steps == len(data[1]) // 32
    warmup, total = round(0.5 * steps), 4 * steps
    for epoch in range(2):
        stats = t.train_epoch(epoch)
        last = (epoch + 1) * steps - 1  # the step index of the epoch's last batch
        by_hand = 0.2 * (
            0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (last - warmup) / (total - warmup)))
        )
        assert stats["lr"] == pytest.approx(by_hand)
    assert t.scheduler.last_epoch == 2 * steps


# ------------------------------------------------------------------------------ class weights
def test_balanced_class_weights_match_sklearn(data):
    from sklearn.utils.class_weight import compute_class_weight

    dataset, train_ids, val_ids = data
    meta = dataset.metadata().set_index("cell_id")
    labels = meta.loc[train_ids, "label"].map(dataset.manifest.label_map).to_numpy()
    keep = np.flatnonzero((labels == 1) | (np.arange(len(labels)) % 3 == 0))  # imbalance it
    t = trainer((dataset, train_ids[keep], val_ids), class_weighting="balanced")
    reference = compute_class_weight("balanced", classes=np.arange(2), y=labels[keep])
    assert reference[0] > 2 * reference[1]
    np.testing.assert_allclose(t.class_weights.numpy(), reference, rtol=1e-6)
    # the training loss is the weighted cross-entropy
    batch = next(iter(t.train_loader.epoch(0)))
    with torch.no_grad():
        logits = t.model(batch.images)
        expected = F.cross_entropy(logits, batch.targets, weight=torch.tensor(reference).float())
        assert t._loss(batch.images, batch.targets, None).item() == pytest.approx(expected.item())
    assert trainer((dataset, train_ids, val_ids), class_weighting="none").class_weights is None


# ------------------------------------------------------------------------------ learning
@pytest.mark.parametrize("family", ["small_cnn", "backbone"])
def test_fold_training_beats_chance(data, family):
    t = trainer(data, family, epochs=8, warmup_epochs=1)
    history = [t.train_epoch(e) for e in range(8)]
    evaluation = t.evaluate()
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["images"] == len(t.train_loader) * 32
    assert history[-1]["images_per_s"] > 0
    assert sorted(evaluation.cell_ids) == sorted(data[2])
    assert evaluation.outputs.shape == (len(data[2]), 2)
    np.testing.assert_allclose(evaluation.outputs.sum(1), 1, rtol=1e-5)
    accuracy = (evaluation.outputs.argmax(1) == evaluation.targets).mean()
    assert accuracy > 0.7, accuracy  # chance: ~0.5
    metrics = evaluation.metrics(data[0].manifest)
    assert metrics["accuracy"] == pytest.approx(accuracy)


# ------------------------------------------------------------------------------ resume
RESUMABLE = {
    "small_cnn": dict(
        model_args={"dropout": 0.3, "batch_norm": True},
        augment="standard",
        optimizer="adamw",
        grad_clip=1.0,
    ),
    "protopnet": dict(optimizer="sgd"),
}


@pytest.mark.parametrize("family", sorted(RESUMABLE))
def test_resume_is_bit_identical(data, tmp_path, family):
    settings = RESUMABLE[family]
    straight = trainer(data, family, **settings)
    for epoch in range(3):
        straight.train_epoch(epoch)
        torch.rand(7)  # the caller's RNG use must not leak into the trainer

    first = trainer(data, family, **settings)
    first.train_epoch(0)
    first.train_epoch(1)
    first.save(tmp_path / "ckpt")
    del first
    torch.manual_seed(1234)  # a different global RNG state at resume time
    resumed = FoldTrainer.load(tmp_path / "ckpt", data[0], data[1], data[2], fold=0)
    assert resumed.epoch == 2
    resumed.train_epoch()

    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]
    if family == "protopnet":
        assert resumed.model.prototype_sources == straight.model.prototype_sources
    with pytest.raises(ValueError, match="fold 0, not 1"):
        FoldTrainer.load(tmp_path / "ckpt", *data, fold=1)


# ------------------------------------------------------------------------------ ProtoPNet
def test_protopnet_runs_its_schedule_with_masks(data):
    dataset, train_ids, _ = data
    t = trainer(data, "protopnet", epochs=3)
    assert t.uses_mask
    assert t.train_loader.config.with_masks
    history = t.fit()
    assert [h["stage"] for h in history] == ["warmup", "joint", "joint"]
    assert [h["pushed"] for h in history] == [False, True, True]  # push_start=2, every 1, last
    assert all("last_layer_loss" in h for h in history[1:])
    sources = t.model.prototype_sources
    assert all(s is not None for s in sources)
    assert len(sources) == 6
    masks = dict(zip(dataset.metadata()["cell_id"], dataset.masks()))
    labels = dict(zip(dataset.metadata()["cell_id"], dataset.labels()))
    for s in sources:
        assert s.source_id in set(train_ids)
        assert labels[s.source_id] == s.class_index  # pushed onto its own class
        y0, x0, y1, x1 = s.box
        assert masks[s.source_id][y0:y1, x0:x1].mean() >= 0.5  # an in-cell patch
    evaluation = t.evaluate()
    assert np.isfinite(evaluation.outputs).all()


# ------------------------------------------------------------------------------ checkpoints
def test_load_model_rebuilds_the_model(data, tmp_path):
    dataset, _, val_ids = data
    t = trainer(data, epochs=2, normalization="percentile")
    t.fit()
    evaluation = t.evaluate()
    t.save(tmp_path / "fold_0", metrics={"accuracy": 1.0})
    t.save(tmp_path / "fold_0")  # overwriting is atomic and leaves nothing behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fold_0"]
    assert sorted(p.name for p in (tmp_path / "fold_0").iterdir()) == [
        "config.json",
        "model.pt",
        "trainer.pt",
    ]

    model, config = load_model(tmp_path / "fold_0")
    assert config == json.loads((tmp_path / "fold_0" / "config.json").read_text())
    contract = config["data"]
    assert contract["channel_names"] == dataset.manifest.channel_names
    assert contract["classes"] == dataset.manifest.classes
    assert contract["shape"] == [3, 32, 32]
    # raw pixels + the contract's normalisation reproduce evaluate()'s probabilities
    rows = np.flatnonzero(np.isin(dataset.metadata()["cell_id"], evaluation.cell_ids))
    order = dataset.metadata()["cell_id"].to_numpy()[rows]
    x = torch.from_numpy(dataset.images(rows).astype(np.float32))
    norm = contract["normalization"]
    x = (x - torch.tensor(norm["offset"]).view(1, -1, 1, 1)) / torch.tensor(norm["scale"]).view(
        1, -1, 1, 1
    )
    with torch.no_grad():
        proba = model(x.float()).softmax(1).numpy()
    position = {c: i for i, c in enumerate(evaluation.cell_ids)}
    expected = evaluation.outputs[[position[c] for c in order]]
    np.testing.assert_allclose(proba, expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ Ray Data
def test_ray_loader_matches_inprocess(data, ray_local):
    ray_trainer = trainer(data, loader="ray", epochs=1)
    local_trainer = trainer(data, loader="inprocess", epochs=1)
    a, b = ray_trainer.evaluate(), local_trainer.evaluate()  # same seed -> same initial model
    order_a, order_b = np.argsort(a.cell_ids), np.argsort(b.cell_ids)
    assert list(a.cell_ids[order_a]) == list(b.cell_ids[order_b])
    np.testing.assert_allclose(a.outputs[order_a], b.outputs[order_b], rtol=1e-5, atol=1e-6)
    stats = ray_trainer.train_epoch(0)
    assert stats["images"] == len(ray_trainer.train_loader) * 32
    assert np.isfinite(stats["loss"])


# ------------------------------------------------------------------------------ regression
def test_regression_fold(tmp_path):
    from cytotune.engine.data import DatasetSpec, DatasetWriter
    from cytotune.engine.synth import render
    from sklearn.metrics import mean_squared_error

    cells = render("metastasis", 96, size=32, seed=1)
    spec = DatasetSpec(("dna", "actin", "vimentin"), "uint16", (3, 32, 32), "regression",
                       targets=("vimentin", "area"))  # fmt: skip
    with DatasetWriter(tmp_path / "reg", spec) as writer:
        for i, (image, mask) in enumerate(zip(cells.images, cells.masks)):
            area = float(mask.mean())
            vimentin = float(image[2][mask > 0].mean() / 1000)
            writer.add(f"c{i}", image, targets={"vimentin": vimentin, "area": area}, mask=mask)
    dataset = CellDataset(tmp_path / "reg")
    ids = dataset.metadata()["cell_id"].to_numpy()
    t = FoldTrainer(
        model_config(dataset, "small_cnn"),
        TrainConfig(epochs=2, batch_size=32),
        dataset,
        ids[:64],
        ids[64:],
    )
    assert t.model.task.kind == "regression"
    assert t.class_weights is None
    t.fit()
    evaluation = t.evaluate()
    assert evaluation.outputs.shape == evaluation.targets.shape == (32, 2)
    mse = mean_squared_error(evaluation.targets, evaluation.outputs)
    assert evaluation.loss == pytest.approx(mse, rel=1e-5)
    assert set(evaluation.metrics()) >= {"r2/vimentin", "mse/area"}
