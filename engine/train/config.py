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

from cytotune.engine.data.augment import NORMALIZATIONS, AugmentConfig
from cytotune.search_spaces.config import check_fields, close_matches, to_jsonable

# Names accepted by the string-valued fields; the optimiser factories live in ``optim.py``.
OPTIMIZER_NAMES = ("sgd", "adam", "adamw", "nadam")
CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer": OPTIMIZER_NAMES,
    "class_weighting": ("auto", "balanced", "none"),
    "schedule": ("onecycle", "cosine"),
    "lr_scaling": ("sqrt", "linear", "none"),
    "tta": ("dihedral", "flips", "none"),
    "precision": ("auto", "bf16", "fp32"),
    "cuda_graphs": ("auto", "off"),
    "normalization": NORMALIZATIONS,
    "loader": ("inprocess", "ray"),
}
# Augmentation presets a sample may name instead of spelling out an AugmentConfig.
AUGMENT_PRESETS = {
    "none": AugmentConfig,
    "cells": AugmentConfig.cells,
    "standard": AugmentConfig.standard,
}
# ``batch_size: auto`` picks the largest of these that the crop size allows and that still gives
# at least MIN_STEPS_PER_EPOCH full batches of the training split.
AUTO_BATCHES = ((64, 256), (128, 128), (10**9, 64))  # (max crop side, batch)
MIN_STEPS_PER_EPOCH = 16  # fewer, larger steps lost 0.6-1.2 points on MitoCheck (BENCHMARKS.md)
REFERENCE_BATCH = 256  # ``lr`` is the peak LR at this batch size; others scale by ``lr_scaling``


@dataclass(frozen=True)
class TrainConfig:
    """Training settings of one fold.

    Args:
        epochs: training epochs (ProtoPNet's last-layer epochs come on top, inside the push
            epochs).
        optimizer: "sgd", "adam", "adamw" or "nadam".
        lr: peak learning rate at batch size 256 (``REFERENCE_BATCH``); other batch sizes scale
            it by ``lr_scaling``.
        weight_decay: decoupled weight decay of weights with >= 2 dimensions (biases and norm
            scales get none); a model's own ``l2`` (small_cnn) is added to it.
        momentum: SGD momentum (Nesterov when > 0); the Adam family ignores it.
        batch_size: crops per training and evaluation batch, or "auto": 256 for crops up to
            64 px, 128 up to 128 px, else 64, halved while an epoch would have fewer than 16
            full batches.
        lr_scaling: "sqrt" (``lr * sqrt(batch / 256)``, the usual rule for Adam), "linear" or
            "none".
        schedule: "onecycle" (torch's OneCycleLR: 30 % cosine warm-up from lr/25, cosine
            down to lr/25e4; momentum not cycled) or "cosine" (linear warm-up of
            ``warmup_epochs``, cosine down to ``lr * min_lr_ratio``).
        warmup_epochs: warm-up length of the "cosine" schedule (fractions allowed).
        min_lr_ratio: the "cosine" schedule ends at ``lr * min_lr_ratio``.
        class_weighting: "balanced" weighs the cross-entropy of class c by
            ``n / (K * n_c)`` over the training split (scikit-learn's "balanced"); "none";
            "auto" is "balanced" when the study's objective is a balanced metric
            (balanced accuracy, macro F1/precision/recall) and "none" otherwise.
            Ignored for regression.
        label_smoothing: cross-entropy label smoothing (classification).
        mixup: Beta(alpha, alpha) of mixup (0 disables); classification models trained on
            the task loss alone (not ProtoPNet, whose loss needs hard labels).
        cutmix: Beta(alpha, alpha) of CutMix (0 disables); with mixup too, each batch uses
            one of the two at random.
        ema: decay of an exponential moving average of the weights, updated every step; when
            > 0 the average is what is evaluated and saved (0 disables).
        tta: test-time averaging of the logits for the validation scores: "dihedral" (the 8
            flips and 90-degree turns), "flips" (identity, horizontal, vertical) or "none".
            Per-epoch scores before the last epoch are taken without it.
        precision: "auto" (bf16 autocast on CUDA, fp32 on CPU), "bf16" or "fp32".
        channels_last: NHWC memory layout; "auto" turns it on for CUDA.
        compile: ``torch.compile`` the model's forward.
        cuda_graphs: "auto" replays each training step as one CUDA graph where the trainer
            allows it (CUDA, Adam/AdamW, a model trained on the task loss, no mixup/CutMix, no
            prototype schedule; see ``engine/train/graphs.py``); "off" (or false, as YAML
            reads a bare ``off``) launches every kernel.
        augment: training augmentations.
        normalization: "zscore", "percentile" or "none" (from the manifest's channel stats).
        grad_clip: maximal global gradient norm, or None.
        seed: base seed; model init, order, augmentation and dropout derive from (seed, fold).
        loader: "inprocess" (split held in memory) or "ray" (Ray Data streaming from Parquet).
    """

    epochs: int = 10
    optimizer: str = "adamw"
    lr: float = 4e-3
    weight_decay: float = 0.1
    momentum: float = 0.9
    batch_size: int | Literal["auto"] = "auto"
    lr_scaling: str = "sqrt"
    schedule: str = "onecycle"
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.0
    class_weighting: str = "auto"
    label_smoothing: float = 0.2
    mixup: float = 0.0
    cutmix: float = 0.0
    ema: float = 0.0
    tta: str = "dihedral"
    precision: str = "auto"
    channels_last: bool | Literal["auto"] = "auto"
    compile: bool = False
    cuda_graphs: str | bool = "auto"
    augment: AugmentConfig = field(default_factory=AugmentConfig.cells)
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
        if isinstance(self.cuda_graphs, bool):  # YAML reads a bare off / on as a bool
            object.__setattr__(self, "cuda_graphs", "auto" if self.cuda_graphs else "off")
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
            "batch_size": (
                self.batch_size == "auto"
                or (isinstance(self.batch_size, int) and self.batch_size >= 1),
                '>= 1 or "auto"',
            ),
            "warmup_epochs": (
                0 <= self.warmup_epochs <= self.epochs or self.schedule != "cosine",
                f"in [0, epochs={self.epochs}]",
            ),
            "label_smoothing": (0 <= self.label_smoothing < 1, "in [0, 1)"),
            "mixup": (self.mixup >= 0, ">= 0 (0 disables)"),
            "cutmix": (self.cutmix >= 0, ">= 0 (0 disables)"),
            "ema": (0 <= self.ema < 1, "in [0, 1) (0 disables)"),
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

    def resolved(self, crop_size: int, n_train: int) -> TrainConfig:
        """This config with ``batch_size: auto`` picked for the crops and split, and ``lr``
        scaled to the batch size by ``lr_scaling`` (``lr_scaling`` becomes "none", so resolving
        twice changes nothing)."""
        batch = self.batch_size
        if batch == "auto":
            batch = next(b for side, b in AUTO_BATCHES if crop_size <= side)
            while batch > 16 and n_train < MIN_STEPS_PER_EPOCH * batch:
                batch //= 2
        scale = {"sqrt": (batch / REFERENCE_BATCH) ** 0.5, "linear": batch / REFERENCE_BATCH}
        lr = self.lr * scale.get(self.lr_scaling, 1.0)
        return self.replace(batch_size=int(batch), lr=lr, lr_scaling="none")

    def replace(self, **changes: Any) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **changes})
