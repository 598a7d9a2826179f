"""CUDA-graphed training steps: which trainers qualify (CPU), and on a GPU that a graphed fold
trains like the eager one (same weights within bf16 noise, schedule applied inside the graph)
and that an uncapturable step falls back to eager training."""

from __future__ import annotations

import pytest
import torch
from cytotune.engine.data import CellDataset
from cytotune.engine.data.folds import make_folds
from cytotune.engine.train import FoldTrainer, TrainConfig
from cytotune.engine.train.evaluation import task_spec
from cytotune.engine.train.graphs import GraphedStep, graph_support
from cytotune.search_spaces import ModelConfig
from torch import nn

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="CUDA graphs need a CUDA device")

QUALIFYING = dict(
    device=torch.device("cuda"),
    setting="auto",
    optimizer="adamw",
    plain_loss=True,
    mixing=False,
    staged=False,
    compiled=False,
)


@pytest.mark.parametrize(
    "change, words",
    [
        ({}, None),
        ({"setting": "off"}, "off"),
        ({"device": torch.device("cpu")}, "CUDA device"),
        ({"optimizer": "sgd"}, "'sgd'"),
        ({"plain_loss": False}, "compute_loss"),
        ({"mixing": True}, "mixup"),
        ({"staged": True}, "prototype"),
        ({"compiled": True}, "torch.compile"),
        ({"random_draws": True}, "dropout"),
    ],
)
def test_graph_support_names_the_reason(change, words):
    ok, reason = graph_support(**{**QUALIFYING, **change})
    assert ok == (words is None)
    assert (reason == "") if words is None else (words in reason)


def test_cuda_graphs_setting_is_validated():
    assert TrainConfig().cuda_graphs == "auto"
    with pytest.raises(ValueError, match="cuda_graphs"):
        TrainConfig(cuda_graphs="always")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from cytotune.engine.synth import write_dataset

    path = tmp_path_factory.mktemp("graphs") / "metastasis"
    write_dataset("metastasis", path, 384, size=32, seed=0, progress=False)
    dataset = CellDataset(path)
    train_ids, val_ids = make_folds(dataset, k=3, group="well").split(0)
    return dataset, train_ids, val_ids


def fold_trainer(data, device, **train):
    dataset, train_ids, val_ids = data
    model = ModelConfig("backbone", 3, task_spec(dataset.manifest), {"backbone": "resnet10t"})
    settings = {"epochs": 3, "batch_size": 32, "tta": "none", "precision": "fp32", **train}
    return FoldTrainer(model, TrainConfig(**settings), dataset, train_ids, val_ids, device=device)


def test_cpu_trainer_trains_eagerly_and_says_why(data):
    trainer = fold_trainer(data, "cpu", epochs=1)
    assert not trainer.graphed
    assert "CUDA" in trainer.eager_reason
    trainer.fit()
    assert trainer._graph_step is None
    assert trainer.history[0]["images"] > 0


@needs_cuda
def test_graphed_fold_trains_like_the_eager_fold(data):
    graphed = fold_trainer(data, "cuda")
    eager = fold_trainer(data, "cuda", cuda_graphs="off")
    graphed.fit(), eager.fit()
    assert graphed._graph_step.captured
    assert eager._graph_step is None
    # the one-cycle schedule ran inside the graph: its LR went up and down
    lrs = [r["lr"] for r in graphed.history]
    assert lrs == pytest.approx([r["lr"] for r in eager.history], rel=1e-5)
    assert pytest.approx([r["loss"] for r in eager.history], rel=0.05) == [
        r["loss"] for r in graphed.history
    ]

    # same weights up to cuDNN's non-deterministic reductions, amplified over 3 epochs (a small
    # tensor such as a BN bias can move by several % of its own norm: compare the whole model)
    def flat(trainer):
        return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])

    assert (flat(graphed) - flat(eager)).norm() <= 0.05 * flat(eager).norm()
    assert graphed.evaluate().loss == pytest.approx(eager.evaluate().loss, rel=0.05)


@needs_cuda
def test_uncapturable_step_falls_back_to_eager():
    torch.manual_seed(0)
    model = nn.Linear(4, 2).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)

    def syncing_loss(x, y, mask):
        loss = nn.functional.cross_entropy(model(x), y)
        if loss.item() < 0:  # a host sync: illegal while capturing
            raise AssertionError
        return loss

    step = GraphedStep(syncing_loss, model, optimizer)
    x, y = torch.randn(8, 4, device="cuda"), torch.randint(0, 2, (8,), device="cuda")
    before = model.weight.detach().clone()
    with pytest.warns(RuntimeWarning, match="capture failed"):
        for _ in range(5):
            step(x, y)
    assert step.failed
    assert not step.captured
    assert step.eager_steps == 5
    assert not torch.equal(before, model.weight)


def test_models_with_dropout_are_recognised():
    from cytotune.engine.train.graphs import draws_random_numbers

    assert not draws_random_numbers(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.0)))
    assert draws_random_numbers(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.3)))
    head = nn.Linear(2, 2)
    head.drop_rate = 0.2  # timm models apply F.dropout(x, self.drop_rate) in forward_head
    assert draws_random_numbers(nn.Sequential(head))


def test_the_trainer_keeps_models_with_dropout_out_of_graphs(data, monkeypatch):
    """A model that draws random numbers in training is never captured: a capture that went
    wrong would leave torch's process-wide CUDA generator in capture mode and make the eager
    fallback raise (seen on the GPU machine with timm's drop_rate)."""
    from cytotune.engine.train import trainer as trainer_module

    seen = []

    def recording(**kwargs):
        seen.append(kwargs["random_draws"])
        return graph_support(**kwargs)

    monkeypatch.setattr(trainer_module, "graph_support", recording)
    dataset, train_ids, val_ids = data
    for drop_rate in (0.0, 0.2):
        params = {"backbone": "resnet10t", "drop_rate": drop_rate}
        model = ModelConfig("backbone", 3, task_spec(dataset.manifest), params)
        FoldTrainer(model, TrainConfig(epochs=1), dataset, train_ids, val_ids, device="cpu")
    assert seen == [False, True]
