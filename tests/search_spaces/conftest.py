"""Tiny per-family configurations (fast at 32 px on CPU) and shared helpers."""

from __future__ import annotations

import pytest
import torch
from cytotune.search_spaces.models import list_models

# resnet10t with a few channels per stage: ~14k parameters.
TINY_TIMM = {"channels": [8, 8, 16, 16], "stem_width": 8}
TINY = {
    "backbone": {"timm_kwargs": TINY_TIMM},
    "channel_attention": {
        "timm_kwargs": TINY_TIMM,
        "embed_dim": 16,
        "mlp": [32, 16],
        "dropout": 0.1,
    },
    "mhl_attention": {"timm_kwargs": TINY_TIMM, "embed_dim": 16, "mlp": [32, 16], "dropout": 0.1},
    "protopnet": {
        "timm_kwargs": TINY_TIMM,
        "prototypes_per_class": 3,
        "prototype_dim": 16,
        "warmup_epochs": 1,
        "push_start": 100,
        "last_layer_epochs": 2,
    },
    "small_cnn": {"filters": 16, "dense_units": 32, "dropout": 0.0},
}
# Variants tested like families: (family, extra args).
VARIANTS = {
    "backbone": ("backbone", {}),
    "channel_attention": ("channel_attention", {}),
    "channel_attention_separate": (
        "channel_attention",
        {"shared_backbone": False, "token_layout": "grid2"},
    ),
    "mhl_attention": ("mhl_attention", {}),
    "protopnet": ("protopnet", {}),
    "small_cnn": ("small_cnn", {"kernel_size": 2, "batch_norm": True, "dense_layers": 2}),
}
# A family added without an entry above is tested with its default args.
VARIANTS |= {f: (f, {}) for f in list_models() if f not in {v[0] for v in VARIANTS.values()}}


def tiny(family: str, **overrides) -> dict:
    """Tiny model args for ``family``."""
    return {**TINY.get(family, {}), **overrides}


def unzero(model: torch.nn.Module) -> torch.nn.Module:
    """Re-initialise all-zero parameters (timm zero-inits the last BN of residual blocks, which
    zeroes the gradient of the block's convolutions) so a gradient check can demand non-zero."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() and not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1 + 0.5)
    return model


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
