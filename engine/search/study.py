"""The study file: what to search, on which data and folds, with which budget and resources.

A study YAML is parsed into frozen, validated dataclasses before anything starts; every error
names the key and the bad value. Example (``cytotune search --config study.yaml``)::

    name: metastasis-demo
    dataset: runs/demo/dataset
    folds: {name: k5-well, k: 5, group: well}      # created when missing
    space: default                                 # packaged name or YAML path (or a list)
    budget: {trials: 12, max_epochs: 6, time_budget_s: 1800}   # race: folds (default) | epochs
    resources: {cpus: 1, gpus: 0.25}
    objective: {metric: f1_weighted, mode: max}    # or objectives: [...] for several (NSGA-II)
    train: {precision: auto, augment: standard}    # overrides for every trial's TrainConfig
    seed: 0
    storage: runs/studies                          # local dir or pyarrow filesystem URI
    plugins: [mylab.models, my_family.py]          # modules or .py files registering families

``plugins`` are imported by the driver (when the file is read, so a family they register can
appear in ``space``) and by every Ray trial before it builds a model; a ``.py`` path resolves
against the study file's folder and its source travels with the trials (see
:mod:`cytotune.search_spaces.models.plugins`).
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

SAMPLERS = ("tpe", "nsga2", "random")
SCHEDULERS = ("asha", "none")
LOADERS = ("auto", "ray", "inprocess")
# loader "auto": datasets up to this many decoded bytes are read whole by each trial. On the
# 2-core CPU a one-trial search's first fold took 21.7 s through Ray Data vs 8.2 s in process
# (`python bench/timeline.py -- cytotune search --config S.yaml`; S: `cytotune synth --n 300
# --size 32`, k=2 folds by well, space demo, 1 trial, 1 epoch, loader ray vs inprocess).
INPROCESS_MAX_BYTES = 1 << 30


def decoded_bytes(dataset: str) -> int | None:
    """Bytes of all crops of a dataset once decoded (rows x C x H x W x item size), from its
    manifest; None where the manifest cannot be read here (e.g. remote storage)."""
    import numpy as np

    from cytotune.engine.data import Manifest

    try:
        manifest = Manifest.load(dataset)
    except (OSError, ValueError):
        return None
    return manifest.num_rows * int(np.prod(manifest.shape)) * np.dtype(manifest.dtype).itemsize


class StudyError(ValueError):
    """A study file that cannot run, with the key and the fix in the message."""


def _fail(where: str, message: str) -> None:
    raise StudyError(f"study file: {where}: {message}")


@dataclass(frozen=True)
class FoldsSpec:
    name: str | None = None
    k: int = 5
    group: str | None = "well"
    stratify: str | None = "label"
    method: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.k < 2:
            _fail("folds.k", f"must be >= 2, got {self.k}")

    @property
    def resolved_name(self) -> str:
        return self.name or f"k{self.k}-{self.group or 'cell'}"


RACES = ("folds", "epochs")


@dataclass(frozen=True)
class Budget:
    """How much a study may spend and how ASHA races configurations.

    ``race: folds`` (default) trains a configuration fold by fold, each to ``max_epochs``, and
    ASHA stops it after 1, 2, 4, ... folds when it ranks in the worse half of the trials scored on
    those same folds; ``race: epochs`` trains all folds in lockstep and ASHA compares trials
    after ``grace_epochs``, 3x that, ... epochs (default grace: 2, at most ``max_epochs``).
    ``parallel_folds`` (race: folds): after the first fold, which trains alone (ASHA's first
    rung), this many folds train at once, their steps taking turns on separate CUDA streams
    (``engine/train/parallel.py``; same results, the GPU better used at small crops). "auto":
    all the remaining folds on a GPU with the in-process loader, one at a time otherwise.
    ``time_budget_s`` is wall-clock seconds for the whole search, Ray start-up included.
    """

    trials: int = 10
    max_epochs: int = 10
    grace_epochs: int | None = None
    time_budget_s: float | None = None
    max_concurrent: int | None = None
    race: str = "folds"
    parallel_folds: int | Literal["auto"] = "auto"

    def __post_init__(self) -> None:
        if self.parallel_folds != "auto" and not (
            isinstance(self.parallel_folds, int) and self.parallel_folds >= 1
        ):
            _fail("budget.parallel_folds", f'must be "auto" or >= 1, got {self.parallel_folds!r}')
        if self.trials < 1:
            _fail("budget.trials", f"must be >= 1, got {self.trials}")
        if self.max_epochs < 1:
            _fail("budget.max_epochs", f"must be >= 1, got {self.max_epochs}")
        if self.race not in RACES:
            _fail("budget.race", f"{self.race!r} is not one of {RACES}")
        if self.grace_epochs is None:  # a default never contradicts what the user wrote
            object.__setattr__(self, "grace_epochs", min(2, self.max_epochs))
        if not 1 <= self.grace_epochs <= self.max_epochs:
            _fail(
                "budget.grace_epochs",
                f"must be within 1..max_epochs ({self.max_epochs}), got {self.grace_epochs}",
            )
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            _fail("budget.time_budget_s", f"must be > 0 seconds, got {self.time_budget_s}")


@dataclass(frozen=True)
class Resources:
    cpus: float = 1.0
    gpus: float = 0.0

    def __post_init__(self) -> None:
        if self.cpus <= 0:
            _fail("resources.cpus", f"must be > 0, got {self.cpus}")
        if self.gpus < 0 or (self.gpus > 1 and self.gpus != int(self.gpus)):
            _fail(
                "resources.gpus", f"must be a fraction in [0, 1] or a whole number, got {self.gpus}"
            )


@dataclass(frozen=True)
class Objective:
    metric: str = "f1_weighted"
    mode: str | None = None  # default from the metric's direction

    def __post_init__(self) -> None:
        from cytotune.engine.metrics import metric_direction

        try:
            direction = metric_direction(self.metric)
        except ValueError as exc:
            _fail("objective.metric", str(exc))
        if self.mode is None:
            object.__setattr__(self, "mode", direction)
        if self.mode not in ("max", "min"):
            _fail("objective.mode", f"must be 'max' or 'min', got {self.mode!r}")

    @property
    def key(self) -> str:
        """The name the trials report the fold mean under."""
        return f"val/{self.metric}"


@dataclass(frozen=True)
class StudyConfig:
    """A validated study; see the module docstring for the file format."""

    name: str
    dataset: str
    folds: FoldsSpec = field(default_factory=FoldsSpec)
    space: tuple[str, ...] = ("default",)
    budget: Budget = field(default_factory=Budget)
    resources: Resources = field(default_factory=Resources)
    objectives: tuple[Objective, ...] = (Objective(),)
    sampler: str = "tpe"
    scheduler: str = "asha"
    train: dict = field(default_factory=dict)
    seed: int = 0
    storage: str = "runs/studies"
    well_column: str | None = None
    loader: str = "auto"
    max_failures: int = 1
    checkpoint_every: int = 1
    plugins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        plugins = (self.plugins,) if isinstance(self.plugins, str) else self.plugins
        if not all(isinstance(p, str) and p for p in plugins):
            _fail("plugins", f"must be a list of module names or .py paths, got {plugins!r}")
        object.__setattr__(self, "plugins", tuple(_plugin_ref(p, Path.cwd()) for p in plugins))
        if not self.name or "/" in self.name:
            _fail("name", f"must be a non-empty name without '/', got {self.name!r}")
        if self.sampler not in SAMPLERS:
            _fail("sampler", f"{self.sampler!r} is not one of {SAMPLERS}")
        if self.scheduler not in SCHEDULERS:
            _fail("scheduler", f"{self.scheduler!r} is not one of {SCHEDULERS}")
        if self.loader not in LOADERS:
            _fail("loader", f"{self.loader!r} is not one of {LOADERS}")
        if len(self.objectives) > 1 and self.scheduler == "asha":
            _fail(
                "scheduler",
                "ASHA prunes on one metric; with several objectives set scheduler: none",
            )
        if self.max_failures < 0:
            _fail("max_failures", f"must be >= 0, got {self.max_failures}")
        # Local paths become absolute however the config was built (file, demo, Python):
        # Ray Tune runs each trial in its own working directory.
        for key in ("dataset", "storage"):
            value = str(getattr(self, key))
            if "://" not in value and not os.path.isabs(value):
                object.__setattr__(self, key, os.path.abspath(value))

    @property
    def effective_loader(self) -> str:
        """The loader trials use: ``loader`` when set, else ``train.loader``; with neither,
        ``inprocess`` for a dataset whose decoded crops fit in ``INPROCESS_MAX_BYTES`` (each
        trial reads it once, without Ray Data's start-up), else Ray Data streaming."""
        if self.loader != "auto":
            return self.loader
        if "loader" in self.train:
            return str(self.train["loader"])
        size = decoded_bytes(self.dataset)
        return "inprocess" if size is not None and size <= INPROCESS_MAX_BYTES else "ray"

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def study_dir(self) -> str:
        return f"{self.storage.rstrip('/')}/{self.name}"

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["space"] = list(self.space)
        data["plugins"] = list(self.plugins)
        data["objectives"] = [dataclasses.asdict(o) for o in self.objectives]
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict, base_dir: str | Path = ".") -> StudyConfig:
        if not isinstance(data, dict):
            raise StudyError(
                f"study file: expected a mapping at top level, got {type(data).__name__}"
            )
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)} | {"objective"}
        unknown = sorted(set(data) - known)
        if unknown:
            _fail(unknown[0], f"unknown key; valid keys: {sorted(known)}")
        for key in ("dataset",):
            if key not in data:
                _fail(
                    key,
                    "missing (the dataset directory made by `cytotune ingest` or `cytotune synth`)",
                )
        base = Path(base_dir)
        dataset = Path(str(data["dataset"]))
        resolved = dataset if dataset.is_absolute() else (base / dataset)
        if not resolved.exists() and not dataset.is_absolute() and dataset.exists():
            _fail(
                "dataset",
                f"{resolved} does not exist: relative paths in a study file resolve against the "
                f"file's folder ({base}), not the working directory; write "
                f"{os.path.relpath(dataset.resolve(), base.resolve())} or an absolute path",
            )
        # absolute: Ray Tune runs each trial in its own working directory
        data["dataset"] = os.path.abspath(resolved)
        data.setdefault("name", Path(data["dataset"]).name)
        storage = str(data.get("storage", "runs/studies"))
        if "://" not in storage and not Path(storage).is_absolute():
            storage = str(base / storage)
        data["storage"] = storage
        if "objective" in data and "objectives" in data:
            _fail("objective", "give either objective or objectives, not both")
        objectives = data.pop("objectives", None) or [
            data.pop("objective", {"metric": "f1_weighted"})
        ]
        data.pop("objective", None)
        data["objectives"] = tuple(
            _build(Objective, o, f"objectives[{i}]") for i, o in enumerate(objectives)
        )
        for key, kind in (("folds", FoldsSpec), ("budget", Budget), ("resources", Resources)):
            if key in data:
                data[key] = _build(kind, data[key], key)
        plugins = data.get("plugins") or ()
        if isinstance(plugins, str):
            plugins = [plugins]
        if not isinstance(plugins, (list, tuple)):
            _fail("plugins", f"must be a list of module names or .py paths, got {plugins!r}")
        data["plugins"] = tuple(_plugin_ref(str(p), base) for p in plugins)
        load_plugins(data["plugins"])  # before the spaces: they may name a plugin's family
        space = data.get("space", "default")
        spaces = [space] if isinstance(space, str) else list(space)
        data["space"] = tuple(_space_ref(s, base) for s in spaces)
        if not isinstance(data.get("train", {}), dict):
            _fail("train", f"must be a mapping of trainer settings, got {data['train']!r}")
        if data.get("train"):
            from cytotune.engine.train import TrainConfig

            try:  # checked here, not first inside every trial
                TrainConfig.from_sample({}, **data["train"])
            except (ValueError, TypeError) as exc:
                _fail("train", str(exc))
        try:
            return cls(**data)
        except TypeError as exc:
            raise StudyError(f"study file: {exc}") from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> StudyConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"study file {path} not found")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise StudyError(f"study file {path}: invalid YAML: {exc}") from None
        return cls.from_dict(data, base_dir=path.parent)


def _build(kind: type, value: Any, where: str):
    """``kind`` from a mapping of the study file, each value checked against its annotation by
    :func:`cytotune.search_spaces.config.coerce` (lists become tuples, ints floats where a float
    belongs; a bool is no integer); ``kind``'s own checks then judge the values."""
    from cytotune.search_spaces.config import coerce

    if isinstance(value, kind):
        return value
    if not isinstance(value, dict):
        _fail(where, f"must be a mapping, got {value!r}")
    names = [f.name for f in dataclasses.fields(kind)]
    unknown = sorted(set(value) - set(names))
    if unknown:
        _fail(f"{where}.{unknown[0]}", f"unknown key; valid keys: {sorted(names)}")
    hints = typing.get_type_hints(kind)
    try:
        checked = {key: coerce(item, hints[key], f"{where}.{key}") for key, item in value.items()}
    except TypeError as exc:
        raise StudyError(f"study file: {exc}") from None
    return kind(**checked)


def _plugin_ref(ref: str, base: Path) -> str:
    """Module names stay names; ``.py`` paths become absolute, against ``base``."""
    from cytotune.search_spaces.models.plugins import is_plugin_file

    if not is_plugin_file(ref) or os.path.isabs(ref):
        return ref
    return os.path.abspath(Path(base) / ref)


def load_plugins(plugins: tuple[str, ...], sources: dict[str, str] | None = None) -> None:
    """Import the study's plugins (a no-op for those already imported); a failure is a
    StudyError naming the plugin."""
    from cytotune.search_spaces.models.plugins import import_plugins

    try:
        import_plugins(plugins, sources)
    except ImportError as exc:
        _fail("plugins", str(exc))


def _space_ref(ref: str, base: Path) -> str:
    """Packaged space names stay names; paths resolve against the study file's folder."""
    from cytotune.search_spaces import list_spaces

    if ref in list_spaces():
        return ref
    path = Path(ref)
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        _fail(
            "space", f"{ref!r} is neither a packaged space ({', '.join(list_spaces())}) nor a file"
        )
    return str(path)


def load_spaces(refs: tuple[str, ...]):
    """Load and merge the study's search spaces (families must not repeat)."""
    from cytotune.search_spaces import SearchSpace, load_space

    spaces = [load_space(r) for r in refs]
    if len(spaces) == 1:
        return spaces[0]
    families: dict = {}
    for space in spaces:
        clash = set(families) & set(space.families)
        if clash:
            _fail("space", f"family {sorted(clash)[0]!r} appears in several spaces; keep it in one")
        families.update(space.families)
    first = spaces[0]
    return SearchSpace(
        "+".join(s.name for s in spaces), families, first.train, first.default_family, "merged"
    )
