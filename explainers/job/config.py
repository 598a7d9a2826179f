"""The explain job's typed, validated settings (from the command line or Python)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..methods._registry import list_explainers
from .executor import EXECUTORS

# The methods (and torch) are imported where a config is validated, not here: the command's
# `--help` reads these constants; listing the registered methods imports none of them.
DEFAULT_METHODS = ("gradcam", "gradcam++", "layercam", "smoothgrad", "integrated_gradients")
BUILTIN_METHODS = tuple(list_explainers())
SPLITS = ("val", "train")
PRECISIONS = ("auto", "bf16", "fp32")
STAGES = ("maps", "population", "quality", "overlays", "prototypes", "attention")


def parse_method(spec: str) -> tuple[str, dict[str, Any]]:
    """``"smoothgrad:n=8,sigma=0.1"`` -> ``("smoothgrad", {"n": 8, "sigma": 0.1})``."""
    from ..methods._registry import get_explainer_class

    name, _, rest = spec.partition(":")
    get_explainer_class(name)  # unknown names: ValueError with close matches
    options: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(
                f"method option {item!r} in {spec!r} is not key=value; "
                "write e.g. smoothgrad:n=8,sigma=0.1"
            )
        options[key.strip()] = yaml.safe_load(value)
    return name, options


# cells per batch by default: on one H100 the MitoCheck job's maps took 21 s in batches of 256
# against 26 s in batches of 128 (a third of the passes launched per cell: the maps were bound by
# what the CPU launches); the CPU, bound by arithmetic, keeps 128
GPU_BATCH = 256
CPU_BATCH = 128


@dataclass(frozen=True)
class ExplainConfig:
    """What to explain and how.

    Args:
        study: the study directory written by ``cytotune search``.
        top_k: explain the k best trials by the study's objective (ignored when ``trials``).
        trials: explicit trial ids to explain instead of the top k.
        methods: registered explainer names, each optionally with ``:key=value,...`` options.
        split: ``val``: each cell explained by the fold model that never trained on it
            (the honest choice; covers the dataset once); ``train``: by a model that trained
            on it.
        limit: at most this many cells per trial (a seeded random sample), None = all.
        batch_size: cells per batch; None: :meth:`cells_per_batch` picks (256 with the local
            executor on a GPU, 128 otherwise).
        actors: explainer actors (default: one per GPU, one on a CPU-only machine).
        gpus_per_actor: GPU share of one actor (fractions pack several actors on one GPU).
        precision: ``auto`` = bf16 autocast on CUDA, fp32 on CPU.
        overlays: cells per trial and method written as PNG overlays.
        quality_cells: cells per trial and method for deletion/insertion and randomisation.
        head_check: score the head-only randomisation of every trial; by default only of those
            whose model verdict it decides (no held-out accuracy: regression, ``split`` train).
        radius, threshold: patch-correlation window half-width and ``|r|`` threshold.
        stages: which stages to run (all by default).
        overwrite: recompute every stage even when finished.
        address: Ray address (None: connect to a running cluster or start a local one).
        executor: ``local`` computes in this process (no Ray: the fastest on one GPU or a
            laptop), ``ray`` on Ray actors (several GPUs or nodes), ``auto`` picks (executor.py).
    """

    study: str
    top_k: int = 3
    trials: tuple[str, ...] = ()
    methods: tuple[str, ...] = DEFAULT_METHODS
    split: str = "val"
    limit: int | None = None
    batch_size: int | None = None
    actors: int | None = None
    gpus_per_actor: float = 0.25
    precision: str = "auto"
    overlays: int = 24
    quality_cells: int = 128
    head_check: bool = False
    radius: int = 2
    threshold: float = 0.5
    stages: tuple[str, ...] = STAGES
    overwrite: bool = False
    seed: int = 0
    address: str | None = None
    executor: str = "auto"
    method_options: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        def bad(key: str, value: Any, fix: str) -> ValueError:
            return ValueError(f"explain: {key}={value!r} is invalid; {fix}")

        if self.top_k < 1:
            raise bad("top_k", self.top_k, "explain at least one trial (--top-k 1)")
        if not self.methods:
            from ..methods import list_explainers

            raise bad("methods", self.methods, f"name at least one of {list_explainers()}")
        parsed = dict(parse_method(m) for m in self.methods)
        if len(parsed) != len(self.methods):
            raise bad("methods", self.methods, "name each method once")
        object.__setattr__(self, "method_options", parsed)
        if self.split not in SPLITS:
            raise bad("split", self.split, f"use one of {SPLITS}")
        if self.limit is not None and self.limit < 1:
            raise bad("limit", self.limit, "use a positive number of cells or leave it out")
        if self.batch_size is not None and self.batch_size < 1:
            raise bad("batch_size", self.batch_size, "use a positive batch size")
        if self.actors is not None and self.actors < 1:
            raise bad("actors", self.actors, "use at least one actor")
        if not 0 < self.gpus_per_actor <= 1 and self.gpus_per_actor != int(self.gpus_per_actor):
            raise bad(
                "gpus_per_actor", self.gpus_per_actor, "use a fraction in (0, 1] or a whole number"
            )
        if self.precision not in PRECISIONS:
            raise bad("precision", self.precision, f"use one of {PRECISIONS}")
        if self.overlays < 0 or self.quality_cells < 0:
            raise bad("overlays/quality_cells", (self.overlays, self.quality_cells), "use >= 0")
        if self.radius < 0 or not 0 <= self.threshold < 1:
            raise bad(
                "radius/threshold", (self.radius, self.threshold), "radius >= 0, 0 <= threshold < 1"
            )
        if self.executor not in EXECUTORS:
            raise bad("executor", self.executor, f"use one of {EXECUTORS}")
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise bad("stages", unknown, f"use some of {STAGES}")

    @property
    def method_names(self) -> list[str]:
        return list(self.method_options)

    def cells_per_batch(self) -> int:
        """``batch_size``, or by default :data:`GPU_BATCH` cells with the local executor on a
        GPU and :data:`CPU_BATCH` otherwise (Ray actors: not measured with more)."""
        if self.batch_size is not None:
            return self.batch_size
        from .executor import local_devices, resolve_executor

        gpu = resolve_executor(self) == "local" and local_devices() != ["cpu"]
        return GPU_BATCH if gpu else CPU_BATCH

    def maps_key(self) -> str:
        """Hash of everything that changes the stored maps (a changed setting recomputes them)."""
        keys = ("split", "limit", "seed", "precision")
        blob = {k: getattr(self, k) for k in keys}
        return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[
            :16
        ]

    def method_key(self, method: str) -> str:
        blob = {"base": self.maps_key(), "method": method, "options": self.method_options[method]}
        return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[
            :16
        ]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("method_options")
        return out
