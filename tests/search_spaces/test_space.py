"""Search spaces as data: packaged files, round-trips, conditionality, validation, samplers."""

from __future__ import annotations

import json

import optuna
import pytest
import torch
from cytotune.search_spaces import ModelConfig, SearchSpace, SpaceError, list_spaces, load_space
from cytotune.search_spaces.adapters import to_optuna_distributions
from cytotune.search_spaces.models import create_model

optuna.logging.set_verbosity(optuna.logging.WARNING)

MINI = """
name: mini
families:
  small_cnn:
    filters: {type: int, low: 8, high: 64, log: true, default: 16}
    dropout: {type: float, low: 0.0, high: 0.5, step: 0.1}
    pool: {type: categorical, choices: [true, false]}
  mhl_attention:
    mlp: {type: categorical, choices: [[32], [64, 32]], default: [32]}
    heads: 2
train:
  lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true, default: 1.0e-3}
"""


def test_packaged_spaces():
    assert {"default", "attention", "prototype", "microtubule"} <= set(list_spaces())
    assert load_space("default").is_conditional
    assert set(load_space("default").families) == {
        "backbone",
        "channel_attention",
        "mhl_attention",
        "protopnet",
        "small_cnn",
    }
    micro = load_space("microtubule").families["small_cnn"]
    assert (micro["conv_layers"].low, micro["conv_layers"].high) == (1, 5)
    assert (micro["filters"].low, micro["filters"].high) == (8, 256)
    assert (micro["kernel_size"].low, micro["kernel_size"].high) == (2, 5)
    assert (micro["dense_layers"].low, micro["dense_layers"].high) == (1, 4)
    assert (micro["dense_units"].low, micro["dense_units"].high) == (16, 512)


@pytest.mark.parametrize("name", ["default", "attention", "prototype", "microtubule", "mini"])
def test_round_trip_yaml_and_json(name, tmp_path):
    space = SearchSpace.from_yaml(MINI) if name == "mini" else load_space(name)
    assert SearchSpace.from_yaml(space.to_yaml()) == space
    assert SearchSpace.from_json(space.to_json()) == space
    assert SearchSpace.from_dict(json.loads(json.dumps(space.to_dict()))) == space
    (tmp_path / "s.yaml").write_text(space.to_yaml())
    assert load_space(tmp_path / "s.yaml") == space


def test_defaults_filled_and_valid():
    space = SearchSpace.from_yaml(MINI)
    # implicit defaults: dropout the grid point nearest the midpoint, pool the first choice
    assert space.default() == {
        "family": "small_cnn",
        "small_cnn": {"filters": 16, "dropout": 0.2, "pool": True},
        "train": {"lr": 1e-3},
    }
    for name in list_spaces():
        s = load_space(name)
        for family in s.families:
            ModelConfig.from_sample(s.sample_for(family, {}), in_chans=3)


def test_conditional_parameters_absent_when_not_applicable():
    space = SearchSpace.from_yaml(MINI)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    samples = []
    study.optimize(lambda t: samples.append(space.suggest(t)) or 0.0, n_trials=12)
    assert {s["family"] for s in samples} == {"small_cnn", "mhl_attention"}
    for sample, trial in zip(samples, study.trials):
        other = ({"small_cnn", "mhl_attention"} - {sample["family"]}).pop()
        assert set(sample) == {"family", sample["family"], "train"}
        assert not any(k.startswith(other) for k in trial.params)
        assert all(
            k == "family" or k.split("/")[0] in (sample["family"], "train") for k in trial.params
        )
        if sample["family"] == "mhl_attention":
            # a fixed value is in the sample but never sent to Optuna
            assert sample["mhl_attention"]["heads"] == 2
            assert "heads" not in str(trial.params)


def test_optuna_optimize_builds_models_default_first():
    space = load_space("default")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    study.enqueue_trial(space.default_params())
    configs = []

    def objective(trial):
        config = ModelConfig.from_sample(space.suggest(trial), in_chans=3, task="binary")
        model = create_model(config).eval()
        with torch.no_grad():
            out = model(torch.randn(1, 3, 32, 32))
        assert out.shape == (1, 2)
        assert torch.isfinite(out).all()
        configs.append(config)
        return float(out[0, 0])

    study.optimize(objective, n_trials=6)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert configs[0] == ModelConfig.from_sample(space.default(), in_chans=3, task="binary")
    # the best configuration can be rebuilt without the study or Ray
    best = optuna.trial.FixedTrial(study.best_trial.params)
    assert ModelConfig.from_sample(space.suggest(best), in_chans=3, task="binary") in configs


def test_ray_optuna_search_define_by_run():
    from ray.tune.search.optuna import OptunaSearch

    space = load_space("attention")
    searcher = OptunaSearch(
        space=space.define_by_run,
        metric="acc",
        mode="max",
        points_to_evaluate=[space.default_params()],
        seed=0,
    )
    first = searcher.suggest("t0")
    assert first == space.default()  # Ray unflattens "family/param" back into the nested sample
    for i in range(1, 4):
        config = searcher.suggest(f"t{i}")
        ModelConfig.from_sample(config, in_chans=3)
        assert set(config) == {"family", config["family"], "train"}
        assert isinstance(config[config["family"]]["mlp"], list)  # non-scalar choice decoded


def test_to_tune_for_flat_spaces_only():
    space = load_space("microtubule")
    tune_space = space.to_tune()
    for _ in range(30):
        values = {
            k: (v.sample() if hasattr(v, "sample") else v)
            for k, v in tune_space["small_cnn"].items()
        }
        args = ModelConfig.from_sample(
            {"family": "small_cnn", "small_cnn": values}, in_chans=1
        ).args
        assert 1 <= args.conv_layers <= 5
        assert 8 <= args.filters <= 256
        assert 2 <= args.kernel_size <= 5
        assert round(args.dropout / 0.05, 6).is_integer()
        assert 0.0 <= args.dropout <= 0.5
    assert set(to_optuna_distributions(space)) == set(space.default_params())
    with pytest.raises(SpaceError, match="conditional.*define_by_run"):
        load_space("default").to_tune()


BAD = {
    "unknown top-level key": (
        "familes: {}",
        r"unknown top-level key 'familes'.*did you mean 'families'",
    ),
    "no families": ("name: x", r"'families' must map at least one family"),
    "unknown family": (
        "families: {small_cn: {}}",
        r"families.small_cn: unknown model family 'small_cn'.*did you mean 'small_cnn'",
    ),
    "unknown parameter": (
        "families: {small_cnn: {filter: 8}}",
        r"families.small_cnn: 'filter' is not a small_cnn argument.*did you mean 'filters'",
    ),
    "unknown type": (
        "families: {small_cnn: {filters: {type: integer, low: 1, high: 2}}}",
        r"families.small_cnn.filters: type 'integer'.*did you mean 'int'",
    ),
    "missing type": (
        "families: {small_cnn: {filters: {low: 1, high: 2}}}",
        r"families.small_cnn.filters: type None \(missing\)",
    ),
    "missing bound": (
        "families: {small_cnn: {filters: {type: int, low: 8}}}",
        r"filters: a int parameter needs 'high'",
    ),
    "unknown key": (
        "families: {small_cnn: {filters: {type: int, lwo: 8, low: 8, high: 9}}}",
        r"filters: unknown key 'lwo'.*did you mean 'low'",
    ),
    "low above high": (
        "families: {small_cnn: {filters: {type: int, low: 300, high: 256}}}",
        r"families.small_cnn.filters: low \(300\) > high \(256\)",
    ),
    "log with zero": (
        "families: {small_cnn: {l2: {type: float, low: 0.0, high: 0.1, log: true}}}",
        r"small_cnn.l2: log scale needs low > 0, got low=0.0",
    ),
    "log with step": (
        "families: {small_cnn: {l2: {type: float, low: 0.1, high: 1, log: true, step: 0.1}}}",
        r"small_cnn.l2: log scale and step",
    ),
    "default out of range": (
        "families: {small_cnn: {filters: {type: int, low: 8, high: 16, default: 32}}}",
        r"small_cnn.filters: default 32 is not a value in \[8, 16\]",
    ),
    "default off grid": (
        "families: {small_cnn: {dropout: {type: float, low: 0, high: 0.5, step: 0.1, default: 0.25}}}",
        r"dropout: default 0.25 is not on the step grid",
    ),
    "default not a choice": (
        "families: {small_cnn: {pool: {type: categorical, choices: [true], default: false}}}",
        r"small_cnn.pool: default False is not one of the choices \[True\]",
    ),
    "empty choices": (
        "families: {small_cnn: {pool: {type: categorical, choices: []}}}",
        r"small_cnn.pool: choices must not be empty",
    ),
    "wrong value type": (
        "families: {small_cnn: {filters: {type: float, low: 8, high: 64}}}",
        r"small_cnn.filters: expected .*int.*got 8.0",
    ),
    "wrong choice type": (
        "families: {small_cnn: {pool: {type: categorical, choices: [1, 0]}}}",
        r"small_cnn.pool: expected bool, got 1",
    ),
    "bad bound type": (
        "families: {small_cnn: {filters: {type: int, low: eight, high: 16}}}",
        r"filters.low: expected int, got 'eight'",
    ),
    "invalid default configuration": (
        "families: {mhl_attention: {embed_dim: 30, heads: 4}}",
        r"families.mhl_attention: the default configuration is invalid: embed_dim \(30\) must be a multiple of heads \(4\)",
    ),
    "bad default family": (
        "default_family: backbone\nfamilies: {small_cnn: {}}",
        r"default_family 'backbone' is not in families",
    ),
    "invalid yaml": ("families: {small_cnn: [", r"invalid YAML"),
    "not a mapping": ("- 1\n- 2", r"expected a mapping at top level"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_invalid_spaces_rejected_with_clear_messages(case, tmp_path):
    text, message = BAD[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError, match=message) as err:
        load_space(path)
    assert str(err.value).startswith(f"{path}: ")  # names the file


def test_unknown_space_names():
    with pytest.raises(SpaceError, match="unknown search space 'defualt'.*did you mean 'default'"):
        load_space("defualt")
    with pytest.raises(SpaceError, match="not found"):
        load_space("missing.yaml")
