"""Optimisers (a table of factories), the warm-up + cosine schedule and class weights."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .config import TrainConfig


def _sgd(groups, config: TrainConfig, fused: bool) -> torch.optim.Optimizer:
    nesterov = config.momentum > 0
    return torch.optim.SGD(
        groups, lr=config.lr, momentum=config.momentum, nesterov=nesterov, fused=fused or None
    )


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": _sgd,
    "adam": lambda groups, config, fused: torch.optim.Adam(
        groups, lr=config.lr, fused=fused or None
    ),
    "adamw": lambda groups, config, fused: torch.optim.AdamW(
        groups, lr=config.lr, fused=fused or None
    ),
    "nadam": lambda groups, config, fused: torch.optim.NAdam(groups, lr=config.lr),
}


def param_groups(params: Iterable[nn.Parameter], weight_decay: float) -> list[dict]:
    """Weights with >= 2 dimensions decay; biases and norm scales (1-d) do not."""
    params = list(params)
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]


def create_optimizer(
    params: Iterable[nn.Parameter],
    config: TrainConfig,
    weight_decay: float | None = None,
    device: torch.device | None = None,
) -> torch.optim.Optimizer:
    """``OPTIMIZERS[config.optimizer]`` over ``params`` (fused kernels on CUDA where torch has them).

    Every parameter is included, trainable now or not: frozen ones have no gradient and are
    skipped by the step, so stage changes (ProtoPNet) need no new optimiser.
    """
    wd = config.weight_decay if weight_decay is None else weight_decay
    fused = device is not None and device.type == "cuda"
    return OPTIMIZERS[config.optimizer](param_groups(params, wd), config, fused)


@dataclass
class WarmupCosine:
    """LR factor per optimiser step: linear warm-up to 1, then cosine down to ``min_ratio``.

    ``factor(s) = (s + 1) / W`` for ``s < W``, else
    ``min_ratio + (1 - min_ratio) * (1 + cos(pi * (s - W) / (T - W))) / 2``,
    with W warm-up steps and T total steps. Picklable, so ``LambdaLR.state_dict`` keeps it.
    """

    warmup_steps: int
    total_steps: int
    min_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / span, 1.0)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _warmup_cosine(optimizer, config: TrainConfig, steps_per_epoch: int):
    total = config.epochs * steps_per_epoch
    warmup = min(round(config.warmup_epochs * steps_per_epoch), total)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(warmup, total, config.min_lr_ratio)
    )


def _one_cycle(optimizer, config: TrainConfig, steps_per_epoch: int):
    total = max(config.epochs * steps_per_epoch, 1)
    # momentum is not cycled: a CUDA-graphed step reads Adam's betas as constants
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=total, cycle_momentum=False
    )


SCHEDULES: dict[str, Callable[..., torch.optim.lr_scheduler.LRScheduler]] = {
    "cosine": _warmup_cosine,
    "onecycle": _one_cycle,
}


def create_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """``SCHEDULES[config.schedule]``, stepped once per optimiser step over
    ``config.epochs * steps_per_epoch`` steps."""
    return SCHEDULES[config.schedule](optimizer, config, steps_per_epoch)


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``n / (K * n_c)`` per class, as scikit-learn's ``compute_class_weight("balanced")``.

    Classes absent from ``labels`` get weight 0 (they contribute no loss terms anyway).
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    if len(counts) > num_classes:
        raise ValueError(f"labels go up to {len(counts) - 1} but there are {num_classes} classes")
    with np.errstate(divide="ignore"):
        weights = len(labels) / (num_classes * counts.astype(np.float64))
    return np.where(counts > 0, weights, 0.0)


CLASS_WEIGHTINGS: dict[str, Callable[[np.ndarray, int], np.ndarray | None]] = {
    "balanced": balanced_class_weights,
    "none": lambda labels, num_classes: None,
    # a study resolves "auto" from its objective (engine/search/crossval.py); alone it is "none"
    "auto": lambda labels, num_classes: None,
}
