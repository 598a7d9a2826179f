"""The deployable model of a bundle: raw pixels in, probabilities (or regression values) out.

:class:`BundleModel` wraps one or more trained members (one fold model, the K fold models of
``--ensemble folds``, or a model retrained on all the data) with the training normalisation, so
exported graphs take raw crops exactly as ``cytotune ingest`` stores them. Members see the
normalised input ``(pixels - offset) / scale`` per channel, as the trainer's loader fed them.

Outputs: for classification the softmax probabilities, averaged over members (an ensemble
averages probabilities, not logits); for regression the predicted values, averaged over members.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import Tensor, nn

OUTPUT_NAMES = {True: "probabilities", False: "values"}


def uses_mask(model: nn.Module) -> bool:
    """Whether a model's forward takes a cell mask (``protopnet``)."""
    return "mask" in inspect.signature(model.forward).parameters


class BundleModel(nn.Module):
    """Normalisation + members + output averaging.

    Args:
        members: trained models taking normalised ``(N, C, H, W)`` input.
        offset: per-channel offset of the normalisation (C,).
        scale: per-channel scale (C,).
        classification: average softmax probabilities (True) or raw outputs (False).
        with_mask: members take a cell mask ``(N, 1, H, W)`` as second input.
    """

    def __init__(
        self,
        members: Sequence[nn.Module],
        offset: Sequence[float],
        scale: Sequence[float],
        classification: bool,
        with_mask: bool = False,
    ) -> None:
        super().__init__()
        if not members:
            raise ValueError("a bundle model needs at least one member")
        if len(offset) != len(scale):
            raise ValueError(f"offset has {len(offset)} channels but scale has {len(scale)}")
        self.members = nn.ModuleList(members)
        self.register_buffer("offset", torch.tensor(offset, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32).view(1, -1, 1, 1))
        self.classification = classification
        self.with_mask = with_mask

    @property
    def output_name(self) -> str:
        return OUTPUT_NAMES[self.classification]

    def normalize(self, pixels: Tensor) -> Tensor:
        """Raw pixels (N, C, H, W) -> what the members were trained on."""
        return (pixels.float() - self.offset) / self.scale

    def member_outputs(self, pixels: Tensor, mask: Tensor | None = None) -> Tensor:
        """Each member's probabilities or values: (M, N, K)."""
        x = self.normalize(pixels)  # (N, C, H, W)
        outputs = []
        for member in self.members:
            out = member(x, mask=mask) if mask is not None else member(x)  # (N, K) logits
            outputs.append(out.float().softmax(1) if self.classification else out.float())
        return torch.stack(outputs)

    def forward(self, pixels: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.member_outputs(pixels, mask).mean(0)  # (N, K)
