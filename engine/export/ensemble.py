"""The deployable model of a bundle: raw pixels in, probabilities (or regression values) out.

:class:`BundleModel` wraps one or more trained members (one fold model, the K fold models of
``--ensemble folds``, or a model retrained on all the data) with the training normalisation, so
exported graphs take raw crops exactly as ``cytotune ingest`` stores them. Members see the
normalised input ``(pixels - offset) / scale`` per channel, as the trainer's loader fed them.

Outputs: for classification the softmax probabilities, averaged over members (an ensemble
averages probabilities, not logits); for regression the predicted values, averaged over members.
With test-time averaging (``tta``, as the trial's validation scores were taken) each member's
logits are first averaged over the flips / 90-degree turns, inside the exported graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from cytotune.engine.train.recipe import TTA_VIEWS
from cytotune.search_spaces.models import capabilities_of
from torch import Tensor, nn

OUTPUT_NAMES = {True: "probabilities", False: "values"}


def uses_mask(model: nn.Module) -> bool:
    """Whether a model's forward takes a cell mask (``Capabilities.takes_mask``)."""
    return capabilities_of(model).takes_mask


def quarter_turns(x: Tensor, k: int) -> Tensor:
    """``torch.rot90(x, k, [2, 3])`` from transposes and flips (ONNX has no rot90)."""
    if k == 1:
        return x.transpose(2, 3).flip([2])
    if k == 2:
        return x.flip([2, 3])
    if k == 3:
        return x.transpose(2, 3).flip([3])
    return x


class BundleModel(nn.Module):
    """Normalisation + members + output averaging.

    Args:
        members: trained models taking normalised ``(N, C, H, W)`` input.
        offset: per-channel offset of the normalisation (C,).
        scale: per-channel scale (C,).
        classification: average softmax probabilities (True) or raw outputs (False).
        with_mask: members take a cell mask ``(N, 1, H, W)`` as second input.
        tta: "none", "flips" or "dihedral" (``cytotune.engine.train.recipe.TTA_VIEWS``).
        square: the crops are square (else quarter turns are left out of the views).
    """

    def __init__(
        self,
        members: Sequence[nn.Module],
        offset: Sequence[float],
        scale: Sequence[float],
        classification: bool,
        with_mask: bool = False,
        tta: str = "none",
        square: bool = True,
    ) -> None:
        super().__init__()
        if tta not in TTA_VIEWS:
            raise ValueError(f"tta {tta!r} is not one of {sorted(TTA_VIEWS)}")
        views = [v for v in TTA_VIEWS[tta] if square or v[0] % 2 == 0]
        self.tta = tta
        self.view_turns: list[int] = [k for k, _ in views]
        self.view_flips: list[bool] = [f for _, f in views]
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
            total = torch.zeros(0)
            for i in range(len(self.view_turns)):
                v, m = x, mask
                if self.view_flips[i]:
                    v = torch.flip(v, [3])
                    m = torch.flip(m, [3]) if m is not None else None
                if self.view_turns[i] != 0:
                    v = quarter_turns(v, self.view_turns[i])
                    m = quarter_turns(m, self.view_turns[i]) if m is not None else None
                out = member(v, mask=m) if m is not None else member(v)  # (N, K) logits
                total = out.float() if i == 0 else total + out.float()
            out = total / len(self.view_turns)  # logits averaged over the views
            outputs.append(out.softmax(1) if self.classification else out)
        return torch.stack(outputs)

    def forward(self, pixels: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.member_outputs(pixels, mask).mean(0)  # (N, K)
