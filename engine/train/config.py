"""``TrainConfig``: how one fold is trained, frozen and validated when built.

A search sample's ``"train"`` group (``{"lr": ..., "batch_size": ..., "weight_decay": ...}``)
becomes a config through :meth:`TrainConfig.from_sample`; the study adds what is fixed for all
trials (``epochs``, ``loader``) as overrides.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from engine.data.augment import NORMALIZATIONS, AugmentConfig
from search_spaces.config import check_fields, close_matches, to_jsonable

# Names accepted by the string-valued fields; the optimiser factories live in ``optim.py``.
OPTIMIZER_NAMES = ("sgd", "adam", "adamw", "nadam")
CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer": OPTIMIZER_NAMES,
    "class_weighting": ("balanced", "none"),
    "precision": ("auto", "bf16", "fp32"),
    "normalization": NORMALIZATIONS,
    "loader": ("inprocess", "ray"),
}
# Augmentation presets a sample may name instead of spelling out an AugmentConfig.
AUGMENT_PRESETS = {"none": AugmentConfig, "standard": AugmentConfig.standard}


@dataclass(frozen=True)
class TrainConfig:
    """Training settings of one fold.

    Args:
        epochs: training epochs (ProtoPNet's last-layer epochs come on top, inside the push
            epochs).
        optimizer: "sgd", "adam", "adamw" or "nadam".
        lr: peak learning rate, reached at the end of the warm-up.
        weight_decay: weight decay of weights with >= 2 dimensions (biases and norm scales get
            none); a model's own ``l2`` (small_cnn) is added to it.
        momentum: SGD momentum (Nesterov when > 0); the Adam family ignores it.
        batch_size: crops per training and evaluation batch.
        warmup_epochs: linear warm-up length in epochs (fractions allowed); then cosine decay.
        min_lr_ratio: the cosine ends at ``lr * min_lr_ratio``.
        class_weighting: "balanced" weighs the cross-entropy of class c by
            ``n / (K * n_c)`` over the training split (scikit-learn's "balanced"); "none".
            Ignored for regression.
        precision: "auto" (bf16 autocast on CUDA, fp32 on CPU), "bf16" or "fp32".
        channels_last: NHWC memory layout; "auto" turns it on for CUDA.
        compile: ``torch.compile`` the model's forward.
        augment: training augmentations.
        normalization: "zscore", "percentile" or "none" (from the manifest's channel stats).
        grad_clip: maximal global gradient norm, or None.
        seed: base seed; model init, order, augmentation and dropout derive from (seed, fold).
        loader: "inprocess" (split held in memory) or "ray" (Ray Data streaming from Parquet).
    """

    epochs: int = 10
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    batch_size: int = 64
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.0
    class_weighting: str = "balanced"
    precision: str = "auto"
    channels_last: bool | Literal["auto"] = "auto"
    compile: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    normalization: str = "zscore"
    grad_clip: float | None = None
    seed: int = 0
    loader: str = "inprocess"

    def __post_init__(self) -> None:
        augment = self.augment
        if isinstance(augment, str):
            if augment not in AUGMENT_PRESETS:
                raise ValueError(
                    f"augment preset {augment!r} unknown{close_matches(augment, AUGMENT_PRESETS)}; "
                    f"use one of {sorted(AUGMENT_PRESETS)} or a dict of AugmentConfig fields"
                )
            object.__setattr__(self, "augment", AUGMENT_PRESETS[augment]())
        elif isinstance(augment, Mapping):
            object.__setattr__(self, "augment", AugmentConfig(**augment))
        check_fields(self)
        for name, options in CHOICES.items():
            value = getattr(self, name)
            if value not in options:
                raise ValueError(
                    f"TrainConfig.{name}={value!r} is not one of {list(options)}"
                    f"{close_matches(value, options)}"
                )
        ranges = {
            "epochs": (self.epochs >= 1, ">= 1"),
            "lr": (self.lr > 0, "> 0"),
            "weight_decay": (self.weight_decay >= 0, ">= 0"),
            "momentum": (0 <= self.momentum < 1, "in [0, 1)"),
            "batch_size": (self.batch_size >= 1, ">= 1"),
            "warmup_epochs": (
                0 <= self.warmup_epochs <= self.epochs,
                f"in [0, epochs={self.epochs}]",
            ),
            "min_lr_ratio": (0 <= self.min_lr_ratio <= 1, "in [0, 1]"),
            "grad_clip": (self.grad_clip is None or self.grad_clip > 0, "> 0 or None"),
            "seed": (self.seed >= 0, ">= 0"),
        }
        for name, (ok, rule) in ranges.items():
            if not ok:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r} must be {rule}")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """A config from plain values, rejecting unknown keys (with close matches)."""
        names = cls.field_names()
        unknown = [key for key in data if key not in names]
        if unknown:
            hints = "".join(close_matches(key, names) for key in unknown)
            raise ValueError(f"unknown training setting(s) {unknown}{hints}; valid: {names}")
        return cls(**data)

    @classmethod
    def from_sample(cls, sample: Mapping[str, Any], **overrides: Any) -> TrainConfig:
        """A config from a search sample's ``"train"`` group plus fixed settings.

        Args:
            sample: the ``"train"`` dict of a sample (a whole sample with a ``"family"`` key is
                accepted too; its ``"train"`` group is used).
            **overrides: settings that win over the sample (e.g. ``epochs=``, ``loader="ray"``).

        Raises:
            ValueError: naming unknown keys in the sample or the overrides.
        """
        if "family" in sample:
            sample = sample.get("train") or {}
        return cls.from_dict({**sample, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **changes})
