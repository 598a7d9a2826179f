"""Plugins: a family defined in the user's own file, outside the repository, reaches a search
run by the real runner on real Ray workers; plugin import errors name the plugin."""

from __future__ import annotations

import os
import sys
import textwrap

import pytest
import yaml
from cytotune.search_spaces.models import list_models
from cytotune.search_spaces.models.plugins import import_plugins, plugin_module_name
from cytotune.search_spaces.models.registry import unregister_family

FAMILY = "tiny_plugin_net"

# A complete family in one file: args dataclass, model, registration. Building it writes the
# process id next to the file, so the test sees which process built it.
PLUGIN = textwrap.dedent(
    '''
    """A user's own family, registered on import."""
    import os
    from dataclasses import dataclass
    from pathlib import Path

    from torch import nn

    from cytotune.search_spaces.models import CytoModel, TaskHead, register_family


    @dataclass(frozen=True)
    class TinyArgs:
        width: int = 4


    @register_family("{family}", args=TinyArgs)
    class TinyNet(CytoModel):
        """One conv layer, global pooling, task head."""

        def __init__(self, args, in_chans, task):
            super().__init__(in_chans, task)
            self.conv = nn.Sequential(nn.Conv2d(in_chans, args.width, 3, padding=1), nn.ReLU())
            self.head = TaskHead(args.width, task)
            Path(__file__).with_name("built-by-" + str(os.getpid())).touch()

        def forward(self, x):
            return self.head(self.conv(x).mean((2, 3)))  # (B, outputs)

        def feature_layers(self):
            return {{"conv": self.conv}}
    '''
).format(family=FAMILY)


@pytest.fixture
def clean_registry():
    """Registry and sys.modules as they were: the plugin family must not leak into other tests."""
    families = set(list_models())
    modules = set(sys.modules)
    yield
    for name in set(list_models()) - families:
        unregister_family(name)
    for name in set(sys.modules) - modules:
        if name.startswith("cytotune_plugin_") or name.startswith("lab_plugin"):
            del sys.modules[name]


def _write_plugin(directory):
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "my_family.py"
    path.write_text(PLUGIN)
    return path


def test_plugin_file_registers_its_family_once(tmp_path, clean_registry):
    from cytotune.search_spaces.models import capabilities_of, create_model

    path = _write_plugin(tmp_path)
    assert FAMILY not in list_models()
    (module,) = import_plugins([str(path)])
    assert import_plugins([str(path)]) == [module]  # a second import is a no-op
    assert module.__name__ == plugin_module_name(str(path))
    assert FAMILY in list_models()
    model = create_model(FAMILY, in_chans=2, task="multiclass", num_outputs=3, width=5)
    assert model.conv[0].out_channels == 5
    assert not capabilities_of(model).takes_mask


def test_model_configs_name_their_plugin_and_import_it_again(tmp_path, clean_registry):
    from cytotune.search_spaces import ModelConfig
    from cytotune.search_spaces.models import create_model

    assert "plugin" not in create_model("small_cnn").config.to_dict()  # cytotune's own
    path = _write_plugin(tmp_path)
    import_plugins([str(path)])
    data = create_model(FAMILY, in_chans=2, width=3).config.to_dict()
    assert data["plugin"] == str(path)
    unregister_family(FAMILY)
    del sys.modules[plugin_module_name(str(path))]
    config = ModelConfig.from_dict(data)  # a fresh process: the family is not registered
    assert config.args.width == 3
    assert FAMILY in list_models()
    assert config.replace(family="small_cnn", args=None).plugin is None


def test_plugin_source_is_used_where_the_file_is_absent(tmp_path, clean_registry):
    missing = str(tmp_path / "elsewhere" / "my_family.py")
    with pytest.raises(ImportError, match="plugin file .*elsewhere/my_family.py not found"):
        import_plugins([missing])
    import_plugins([missing], sources={missing: PLUGIN})
    assert FAMILY in list_models()


def test_plugin_module_names_and_errors(tmp_path, monkeypatch, clean_registry):
    from cytotune.engine.search import StudyConfig, StudyError

    package = tmp_path / "lab_plugins"
    package.mkdir()
    (package / "__init__.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    import_plugins(["lab_plugins"])
    assert FAMILY in list_models()
    with pytest.raises(ImportError, match="plugin 'lab_nowhere' cannot be imported"):
        import_plugins(["lab_nowhere"])
    with pytest.raises(StudyError, match="study file: plugins: plugin file .*gone.py not found"):
        StudyConfig.from_dict({"dataset": str(tmp_path), "plugins": ["gone.py"]}, tmp_path)


def test_family_from_a_plugin_file_is_searched_on_a_ray_worker(tmp_path, ray_local, clean_registry):
    """The plugin lives in tmp_path (not importable from the repository); the study file names
    it by a relative path; one trial, one epoch, through the real runner on Ray."""
    from cytotune.engine.search import StudyConfig
    from cytotune.engine.search.runner import run_search
    from cytotune.engine.synth import write_dataset
    from cytotune.engine.train import load_model

    plugin = _write_plugin(tmp_path / "user_code")
    write_dataset("metastasis", tmp_path / "dataset", n=48, size=16, seed=0, progress=False)
    space = {
        "name": "mine",
        "default_family": FAMILY,
        "families": {FAMILY: {"width": {"type": "int", "low": 2, "high": 4, "default": 3}}},
        "train": {"batch_size": 16},
    }
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(space))
    study_file = tmp_path / "study.yaml"
    study_file.write_text(
        yaml.safe_dump(
            {
                "name": "plugin-study",
                "dataset": "dataset",
                "plugins": ["user_code/my_family.py"],
                "space": "mine.yaml",
                "folds": {"k": 2, "group": "well"},
                "budget": {"trials": 1, "max_epochs": 1},
                "scheduler": "none",
                "resources": {"cpus": 1},
                "objective": {"metric": "accuracy"},
                "train": {"loader": "inprocess"},
                "storage": "studies",
            }
        )
    )
    study = StudyConfig.from_yaml(study_file)
    assert study.plugins == (str(plugin),)
    for stale in plugin.parent.glob("built-by-*"):
        stale.unlink()
    store = run_search(study, verbose=False)
    trials = store.table("trials")
    assert list(trials["status"]) == ["completed"], trials.get("error")
    built = {int(p.name.split("-")[-1]) for p in plugin.parent.glob("built-by-*")}
    assert built
    assert os.getpid() not in built  # built by a Ray worker, not by this driver
    fold_dir = f"{trials['checkpoint'].iloc[0]}/fold_0"
    model, config = load_model(fold_dir)
    assert config["model"]["family"] == FAMILY
    assert type(model).__name__ == "TinyNet"
    # the checkpoint names its plugin: a process that never imported it rebuilds the model
    assert config["model"]["plugin"] == str(plugin)
    unregister_family(FAMILY)
    del sys.modules[plugin_module_name(str(plugin))]
    model, _ = load_model(fold_dir)
    assert type(model).__name__ == "TinyNet"
    assert FAMILY in list_models()
