"""Several fold trainers trained together, one optimiser step of each in turn, each on its own
CUDA stream.

At 64 px a captured ResNet step is hundreds of small kernels that leave most of a large GPU
idle (``bench/fold_streams.py``); the steps of other folds, queued on other streams, fill it.
Results are those of training the folds one after another: every trainer keeps its own RNG
stream (each turn runs inside ``FoldTrainer.rng_scope``) and its own data order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch

from .trainer import FoldTrainer


def _streams(trainers: Sequence[FoldTrainer]) -> list:
    """One new stream per CUDA trainer (None on the CPU), each after the work queued so far."""
    streams = []
    for trainer in trainers:
        if trainer.device.type != "cuda":
            streams.append(None)
            continue
        stream = torch.cuda.Stream(trainer.device)
        stream.wait_stream(torch.cuda.current_stream(trainer.device))
        streams.append(stream)
    return streams


def train_concurrently(
    trainers: Sequence[FoldTrainer],
    epochs: int | None = None,
    on_epoch: Callable[[FoldTrainer, dict], None] | None = None,
) -> None:
    """Train every trainer from its next epoch up to ``epochs`` (default: its config's).

    Trainers that reach the end of an epoch start their next one while the others finish
    theirs, so folds of different sizes never wait for each other. ``on_epoch(trainer,
    record)`` runs after each of a trainer's epochs, on its stream (e.g. a validation point).
    """
    streams = _streams(trainers)
    ends = [epochs or trainer.config.epochs for trainer in trainers]
    running = {i: None for i, t in enumerate(trainers) if t.epoch < ends[i]}
    while running:
        for i in list(running):
            trainer, stream = trainers[i], streams[i]
            if running[i] is None:
                running[i] = trainer.epoch_steps()
            on_stream = torch.cuda.stream(stream) if stream else contextlib.nullcontext()
            with on_stream, trainer.rng_scope():
                try:
                    next(running[i])
                    continue
                except StopIteration as stop:
                    if on_epoch is not None:
                        on_epoch(trainer, stop.value)
            running[i] = None
            if trainer.epoch >= ends[i]:
                del running[i]
    for trainer, stream in zip(trainers, streams):
        if stream is not None:
            torch.cuda.current_stream(trainer.device).wait_stream(stream)
