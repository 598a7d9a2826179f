"""Registry, factory, typed configs, local-only pretrained weights, task utilities."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import timm
import torch
from cytotune.search_spaces import ModelConfig, TaskSpec
from cytotune.search_spaces.models import create_model, family_args, list_models, r2_score
from cytotune.search_spaces.models.families._trunk import resolve_weights
from cytotune.search_spaces.models.families.small_cnn import SmallCNNArgs
from sklearn.metrics import r2_score as sk_r2

from .conftest import TINY_TIMM, tiny


def test_list_models():
    assert list_models() == [
        "backbone",
        "channel_attention",
        "mhl_attention",
        "protopnet",
        "small_cnn",
    ]
    assert list_models("proto*") == ["protopnet"]
    assert list_models("*attention") == ["channel_attention", "mhl_attention"]


def test_unknown_names_list_close_matches():
    with pytest.raises(
        ValueError, match="unknown model family 'small_cn'.*did you mean 'small_cnn'"
    ):
        create_model("small_cn")
    with pytest.raises(ValueError, match="unknown argument 'filter'.*did you mean 'filters'"):
        create_model("small_cnn", filter=8)
    with pytest.raises(ValueError, match="unknown timm model 'resnet1'"):
        create_model("backbone", backbone="resnet1")
    with pytest.raises(TypeError, match=r"SmallCNNArgs.pool: expected bool, got 'yes'"):
        create_model("small_cnn", pool="yes")


def test_task_spec_validation():
    assert TaskSpec.parse("regression", 3) == TaskSpec("regression", 3)
    with pytest.raises(ValueError, match="binary task has num_outputs=2"):
        TaskSpec("binary", 3)
    with pytest.raises(ValueError, match="target_names has 1 names for 2 outputs"):
        TaskSpec("multiclass", 2, ("a",))
    with pytest.raises(
        ValueError, match="task kind 'regresion' unknown.*did you mean 'regression'"
    ):
        TaskSpec("regresion", 1)


@pytest.mark.parametrize("family", list_models())
def test_config_json_round_trip_rebuilds_the_exact_model(family):
    model = create_model(family, in_chans=3, task="multiclass", num_outputs=4, **tiny(family))
    config = ModelConfig.from_json(model.config.to_json())
    assert config == model.config
    rebuilt = create_model(config)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt.eval()(x), model.eval()(x))
    assert create_model(config.to_dict()).config == config


def test_config_from_search_sample_and_overrides():
    sample = {"family": "small_cnn", "small_cnn": {"filters": 8}, "train": {"lr": 0.1}}
    config = ModelConfig.from_sample(sample, in_chans=2, task="regression", num_outputs=3)
    assert config.args == SmallCNNArgs(filters=8)
    assert config.task == TaskSpec("regression", 3)
    assert isinstance(config.args, family_args("small_cnn"))
    model = create_model(config, in_chans=4, conv_layers=2)
    assert model.config.in_chans == 4
    assert model.config.args.conv_layers == 2
    assert model.config.args.filters == 8
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.in_chans = 5


@pytest.mark.parametrize(
    "bad", ["hf-hub:timm/resnet10t.a1_in1k", "https://x/y.pth", "/nonexistent/weights.pth"]
)
def test_pretrained_only_from_local_paths(bad):
    with pytest.raises(
        ValueError, match="Nothing is downloaded at run time.*pretrained='/path/to/resnet10t.pth'"
    ):
        create_model("backbone", pretrained=bad)
    with pytest.raises(ValueError, match="only a local file or directory"):
        resolve_weights("resnet10t", True)
    with pytest.raises(ValueError, match="pretrained=True for 'resnet10t'.*Nothing is downloaded"):
        create_model("backbone", pretrained=True)


@pytest.mark.parametrize("family", ["backbone", "protopnet", "channel_attention"])
def test_pretrained_from_local_file_and_directory(tmp_path, family):
    from safetensors.torch import save_file

    source = timm.create_model("resnet10t", **TINY_TIMM)
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    (tmp_path / "dir").mkdir()
    save_file(source.state_dict(), tmp_path / "dir" / "model.safetensors")
    for path in (tmp_path / "weights.pth", tmp_path / "dir"):
        model = create_model(family, in_chans=2, pretrained=str(path), **tiny(family))
        layer = dict(model.named_parameters())
        name = next(n for n in layer if n.endswith("layer2.0.conv1.weight"))
        torch.testing.assert_close(layer[name], source.layer2[0].conv1.weight)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no weight file"):
        create_model("backbone", pretrained=str(tmp_path / "empty"))


def test_r2_matches_sklearn():
    rng = np.random.default_rng(0)
    target = rng.normal(size=(50, 3))
    pred = target + rng.normal(scale=0.5, size=(50, 3))
    ours = r2_score(torch.tensor(pred), torch.tensor(target)).numpy()
    np.testing.assert_allclose(ours, sk_r2(target, pred, multioutput="raw_values"), rtol=1e-6)
