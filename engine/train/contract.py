"""The data contract of a trained model: what it takes as input and what its outputs mean.

Written once, by :meth:`DataContract.of` from the dataset's manifest, into every fold
checkpoint's ``config.json`` (``"data"``) and from there into a bundle's ``data.json``; read
back with :meth:`DataContract.from_dict`, which names a missing or malformed field. The
contract's version is the version of the file that holds it (``cytotune-fold-checkpoint``,
``cytotune-bundle``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Normalization:
    """Per-channel input normalisation: ``x_norm = (x - offset) / scale``."""

    method: str
    offset: tuple[float, ...]  # (C,)
    scale: tuple[float, ...]  # (C,)
    stats: dict[str, Any]  # the dataset statistics they came from

    @property
    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(offset, scale)`` as float32 arrays of shape (1, C, 1, 1)."""
        return (
            np.asarray(self.offset, np.float32).reshape(1, -1, 1, 1),
            np.asarray(self.scale, np.float32).reshape(1, -1, 1, 1),
        )


@dataclass(frozen=True)
class DataContract:
    """The input a model takes (raw crops of ``shape`` and ``dtype``, channels in order,
    normalised inside) and what its outputs are (``classes`` or ``targets``)."""

    dataset: str
    content_hash: str
    task: str  # "classification" or "regression"
    channel_names: tuple[str, ...]
    shape: tuple[int, int, int]  # (C, H, W)
    dtype: str  # the raw pixels' dtype as ingested
    normalization: Normalization
    label_map: dict[str, int]
    classes: tuple[str, ...]
    targets: tuple[str, ...]
    has_mask: bool  # the dataset has cell masks

    @classmethod
    def of(cls, manifest, normalization: str) -> DataContract:
        """The contract of a model trained on ``manifest``'s dataset."""
        from cytotune.engine.data.augment import normalization_constants

        offset, scale = normalization_constants(manifest.stats, normalization)
        return cls(
            dataset=manifest.name,
            content_hash=manifest.content_hash,
            task=manifest.task,
            channel_names=tuple(manifest.channel_names),
            shape=tuple(int(s) for s in manifest.shape),
            dtype=manifest.dtype,
            normalization=Normalization(
                normalization,
                tuple(float(v) for v in offset),
                tuple(float(v) for v in scale),
                dataclasses.asdict(manifest.stats),
            ),
            label_map=dict(manifest.label_map),
            classes=tuple(manifest.classes),
            targets=tuple(manifest.targets),
            has_mask=bool(manifest.has_mask),
        )

    @classmethod
    def from_dict(cls, data: dict, where: str = "the data contract") -> DataContract:
        """The contract stored as ``data``; ValueError naming what is missing or malformed."""
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in (data or {})]
        norm = (data or {}).get("normalization") or {}
        missing += [f"normalization.{k}" for k in ("method", "offset", "scale") if k not in norm]
        if missing:
            raise ValueError(
                f"{where} lacks {', '.join(missing)}; it was written by another cytotune: "
                "train (or pull) it again with this one"
            )
        channels = tuple(str(c) for c in data["channel_names"])
        shape = tuple(int(s) for s in data["shape"])
        offset = tuple(float(v) for v in norm["offset"])
        scale = tuple(float(v) for v in norm["scale"])
        if (
            len(shape) != 3
            or shape[0] != len(channels)
            or not len(offset) == len(scale) == shape[0]
        ):
            raise ValueError(
                f"{where} is inconsistent: shape {shape}, {len(channels)} channel names, "
                f"{len(offset)} offsets and {len(scale)} scales (one per channel expected)"
            )
        return cls(
            dataset=str(data["dataset"]),
            content_hash=str(data["content_hash"]),
            task=str(data["task"]),
            channel_names=channels,
            shape=shape,
            dtype=str(data["dtype"]),
            normalization=Normalization(
                str(norm["method"]), offset, scale, dict(norm.get("stats") or {})
            ),
            label_map={str(k): int(v) for k, v in dict(data["label_map"]).items()},
            classes=tuple(str(c) for c in data["classes"]),
            targets=tuple(str(t) for t in data["targets"]),
            has_mask=bool(data["has_mask"]),
        )

    def to_dict(self) -> dict[str, Any]:
        """The contract as JSON-able values (lists for tuples), as checkpoints store it."""
        return _plain(dataclasses.asdict(self))

    @property
    def is_classification(self) -> bool:
        return self.task == "classification"

    @property
    def output_names(self) -> list[str]:
        """Class names by output index, or regression target names."""
        return list(self.classes if self.is_classification else self.targets)

    def mismatch(self, other: DataContract) -> tuple[str, Any, Any] | None:
        """The first of channels, shape, task, label map or targets that differ from
        ``other``'s: ``(field, self's value, other's value)``; None when they agree."""
        for key in ("channel_names", "shape", "task", "label_map", "targets"):
            if getattr(self, key) != getattr(other, key):
                return key, getattr(self, key), getattr(other, key)
        return None


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
