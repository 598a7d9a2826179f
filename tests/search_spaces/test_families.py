"""Every registered family, 1-4 channels, every task: forward, backward, gradients, shapes."""

from __future__ import annotations

import pytest
import torch
from cytotune.search_spaces.models import create_model, list_models

from .conftest import TINY, VARIANTS, tiny, unzero

TASKS = {"multiclass": ("multiclass", 3), "regression": ("regression", 2), "binary": ("binary", 2)}


def targets(kind: str, n_out: int, batch: int) -> torch.Tensor:
    if kind == "regression":
        return torch.randn(batch, n_out)
    return torch.arange(batch) % n_out


def test_every_family_has_a_tiny_config():
    assert sorted(TINY) == list_models()
    assert {family for family, _ in VARIANTS.values()} == set(list_models())


@pytest.mark.parametrize("task", ["multiclass", "regression"])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_forward_backward_gradients(variant, channels, task):
    family, extra = VARIANTS[variant]
    kind, n_out = TASKS[task]
    model = unzero(
        create_model(
            family, in_chans=channels, task=kind, num_outputs=n_out, **tiny(family, **extra)
        )
    )
    x = torch.randn(4, channels, 32, 32)
    mask = torch.zeros(4, 32, 32)
    mask[:, 4:28, 6:26] = 1
    result = model.compute_loss(x, targets(kind, n_out, 4), mask=mask)
    result.loss.backward()

    assert result.output.shape == (4, n_out)
    assert torch.isfinite(result.output).all()
    assert torch.isfinite(result.loss)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    for name, p in trainable:
        assert p.grad is not None, f"{name} received no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("family", list_models())
def test_output_shape_per_task_and_size(family, size, task):
    kind, n_out = TASKS[task]
    model = create_model(family, in_chans=3, task=kind, num_outputs=n_out, **tiny(family)).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, n_out)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("family", list_models())
def test_feature_layers_give_feature_maps(family):
    model = create_model(family, in_chans=2, task="binary", **tiny(family)).eval()
    layers = model.feature_layers()
    assert layers
    assert model.target_layer is list(layers.values())[-1]
    assert all(model.get_submodule(name) is module for name, module in layers.items())
    seen = {}
    hooks = [
        m.register_forward_hook(lambda m, i, o, k=k: seen.setdefault(k, o))
        for k, m in layers.items()
    ]
    with torch.no_grad():
        model(torch.randn(2, 2, 64, 64))
    for h in hooks:
        h.remove()
    assert set(seen) == set(layers)
    for name, fmap in seen.items():
        assert fmap.dim() == 4, name
        assert fmap.shape[-1] >= 1, name


@pytest.mark.parametrize("family", list_models())
def test_regression_has_one_head_per_target_and_scores_predictions(family):
    model = create_model(
        family,
        in_chans=1,
        task="regression",
        num_outputs=3,
        target_names=["a", "b", "c"],
        **tiny(family),
    ).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 32, 32))
    assert torch.equal(model.score(out, 2), out[:, 2])  # "higher prediction" of target 2
    assert set(model.metrics(out, torch.randn(2, 3))) == {"r2", "r2/a", "r2/b", "r2/c"}
    heads = getattr(getattr(model, "head", None), "out", None)
    if heads is not None:  # protopnet's per-target heads are rows of its last layer
        assert isinstance(heads, torch.nn.ModuleList)
        assert len(heads) == 3


def test_wrong_channel_count_is_rejected():
    model = create_model("channel_attention", in_chans=3, **tiny("channel_attention"))
    with pytest.raises(ValueError, match="expected 3 channels"):
        model(torch.randn(1, 2, 32, 32))
