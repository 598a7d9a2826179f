"""Shared pieces of the search benchmarks: datasets, one-configuration spaces, study files."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import numpy as np
import yaml


def machine() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else platform.machine()


def random_dataset(path: Path, n: int, size: int, channels: int = 3, seed: int = 0) -> Path:
    """A classification dataset of random uint8 crops (content is irrelevant for throughput)."""
    from cytotune.engine.data import DatasetSpec, DatasetWriter

    rng = np.random.default_rng(seed)
    spec = DatasetSpec(
        channel_names=tuple(f"ch{i}" for i in range(channels)),
        dtype="uint8",
        shape=(channels, size, size),
        group_columns=("well",),
    )
    with DatasetWriter(path, spec, rows_per_shard=2048) as writer:
        for i in range(n):
            writer.add(
                f"c{i:06d}",
                rng.integers(0, 256, (channels, size, size), dtype=np.uint8),
                label="ab"[i % 2],
                groups={"well": f"w{i % 16}"},
            )
    return path


def fixed_space(path: Path, family: str, args: dict, batch_size: int, lr: float = 1e-3) -> Path:
    """A search space with exactly one configuration (for throughput runs)."""
    fixed = {k: {"type": "fixed", "value": v} for k, v in args.items()}
    space = {
        "name": path.stem,
        "families": {family: fixed},
        "train": {"batch_size": batch_size, "lr": lr},
    }
    path.write_text(yaml.safe_dump(space))
    return path


def throughput_train(loader: str) -> dict:
    """Trainer settings of the throughput runs: bf16, channels_last, no warm-up or class weights."""
    return {
        "loader": loader,
        "precision": "bf16",
        "channels_last": True,
        "warmup_epochs": 0,
        "class_weighting": "none",
    }


def study(path: Path, **fields) -> Path:
    path.write_text(yaml.safe_dump(fields))
    return path


def write_json(out: Path | None, result: dict, script: str, argv) -> None:
    """One run's result as a JSON file at ``out`` (when given), with the command that made it."""
    result["command"] = f"python bench/{script} " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")


def write_result(out: Path | None, result: dict) -> None:
    line = json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()})
    print(line, flush=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as handle:
            handle.write(line + "\n")
