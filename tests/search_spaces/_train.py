"""A minimal training loop for the family tests (the real one lives in engine/train)."""

from __future__ import annotations

import numpy as np
import torch
from cytotune.search_spaces.models import CytoModel


def normalise(images: np.ndarray) -> torch.Tensor:
    """uint16 (N, C, H, W) -> float32 with each channel scaled by its 99th percentile."""
    x = torch.from_numpy(images.astype(np.float32))
    scale = torch.quantile(x.transpose(0, 1).flatten(1), 0.99, dim=1).clamp_min(1.0)
    return x / scale.view(1, -1, 1, 1)


def batches(n: int, batch_size: int, generator: torch.Generator | None = None):
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return order.split(batch_size)


def run_epoch(model: CytoModel, x, y, mask, opt, batch_size: int, gen: torch.Generator) -> float:
    model.train()
    total = 0.0
    for idx in batches(len(x), batch_size, gen):
        out = model.compute_loss(x[idx], y[idx], None if mask is None else mask[idx])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        total += out.loss.item() * len(idx)
    return total / len(x)


def fit(
    model: CytoModel,
    x,
    y,
    mask=None,
    epochs: int = 6,
    lr: float = 3e-3,
    batch_size: int = 32,
    seed: int = 0,
) -> list[float]:
    """Adam over ``epochs``; a model with a ``schedule`` (ProtoPNet) follows its stages and
    pushes its prototypes. Returns the mean loss per epoch."""
    gen = torch.Generator().manual_seed(seed)
    schedule = getattr(model, "schedule", None)
    losses = []
    for epoch in range(epochs):
        if schedule is not None:
            model.set_stage(schedule.stage(epoch))
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
        losses.append(run_epoch(model, x, y, mask, opt, batch_size, gen))
        if schedule is not None and schedule.push_after(epoch, epochs):
            model.push(
                (x[i], y[i], None if mask is None else mask[i], i.tolist())
                for i in batches(len(x), 64)
            )
            if schedule.last_layer_epochs:
                model.set_stage("last_layer")
                opt = torch.optim.Adam(model.last_layer.parameters(), lr=lr)
                for _ in range(schedule.last_layer_epochs):
                    run_epoch(model, x, y, mask, opt, batch_size, gen)
    return losses


@torch.no_grad()
def evaluate(model: CytoModel, x, y, mask=None) -> dict[str, float]:
    model.eval()
    kw = {} if mask is None else {"mask": mask}
    return model.metrics(model(x, **kw), y)
