"""Small models and inputs (32 px) shared by the explainer tests."""

from __future__ import annotations

import pytest
import torch
from cytotune.search_spaces.models import create_model


def small_cnn(in_chans: int, task: str = "multiclass", num_outputs: int = 3, seed: int = 0, **kw):
    """A seeded small_cnn in eval mode (3 blocks of 32 filters; with pooling its maps are
    16, 8 and 4 px at 32 px input)."""
    torch.manual_seed(seed)
    return create_model(
        "small_cnn", in_chans=in_chans, task=task, num_outputs=num_outputs, **kw
    ).eval()


def inputs(b: int, c: int, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, c, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="session")
def backbone():
    """A timm resnet10t ``backbone`` family model with 4 channels; at 32 px its ``layer2`` is
    4 x 4 and ``layer3`` 2 x 2 (``layer4``, 1 x 1, would give constant maps)."""
    torch.manual_seed(0)
    return create_model("backbone", in_chans=4, task="multiclass", num_outputs=3).eval()
