"""Parts of the default training recipe for cell crops: weight EMA, mixup / CutMix, test-time
averaging over flips and 90-degree turns.

Random draws use torch's default generator, which the trainer runs inside its own forked RNG
stream, so they are reproducible per (seed, fold) and survive a resume.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn


class WeightEMA:
    """An exponential moving average of a model's weights (buffers are copied as they are).

    ``ema = d * ema + (1 - d) * weights`` after every optimiser step, with the warmed-up
    ``d = min(decay, (1 + t) / (10 + t))`` at update t (as timm and TensorFlow do), so short runs
    of a few hundred steps are not dominated by the initial weights; the averaged copy is what
    gets evaluated and saved.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        ema = list(self.model.parameters())
        live = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema, live, 1.0 - decay)
        for ema_buffer, buffer in zip(self.model.buffers(), model.buffers()):
            ema_buffer.copy_(buffer)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict, updates: int = 0) -> None:
        self.model.load_state_dict(state)
        self.updates = updates


def _box(lam: float, height: int, width: int) -> tuple[int, int, int, int]:
    """A CutMix box covering about ``1 - lam`` of the crop, centred uniformly at random."""
    ratio = (1.0 - lam) ** 0.5
    h, w = int(height * ratio), int(width * ratio)
    cy, cx = int(torch.randint(0, height, ())), int(torch.randint(0, width, ()))
    top, left = max(cy - h // 2, 0), max(cx - w // 2, 0)
    return top, min(top + h, height), left, min(left + w, width)


def mix_batch(
    x: Tensor, y: Tensor, mixup: float, cutmix: float
) -> tuple[Tensor, Tensor, Tensor, float]:
    """Mixup or CutMix of a batch with a shuffled copy of itself.

    Args:
        x: images (B, C, H, W).
        y: class indices (B,).
        mixup: Beta alpha of mixup (0: off).
        cutmix: Beta alpha of CutMix (0: off); with both on, one of them per batch (p = 1/2).

    Returns:
        (mixed images, y, y of the partner crops, lam): the loss is
        ``lam * CE(out, y) + (1 - lam) * CE(out, y_partner)``.
    """
    use_cutmix = cutmix > 0 and (mixup <= 0 or bool(torch.rand(()) < 0.5))
    alpha = cutmix if use_cutmix else mixup
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(x.shape[0]).to(x.device)  # (B,)
    if use_cutmix:
        top, bottom, left, right = _box(lam, x.shape[2], x.shape[3])
        x = x.clone()
        x[:, :, top:bottom, left:right] = x[perm, :, top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / (x.shape[2] * x.shape[3])
    else:
        x = lam * x + (1.0 - lam) * x[perm]
    return x, y, y[perm], lam


def _rot(k: int, flip: bool) -> Callable[[Tensor], Tensor]:
    def view(t: Tensor) -> Tensor:
        t = torch.flip(t, dims=(3,)) if flip else t
        return torch.rot90(t, k, dims=(2, 3)) if k else t

    return view


TTA_VIEWS: dict[str, tuple[tuple[int, bool], ...]] = {
    "none": ((0, False),),
    "flips": ((0, False), (0, True), (2, True)),  # identity, horizontal flip, vertical flip
    "dihedral": tuple((k, f) for f in (False, True) for k in range(4)),
}


def tta_views(mode: str, height: int, width: int) -> list[Callable[[Tensor], Tensor]]:
    """The transforms whose logits are averaged; 90-degree turns only for square crops."""
    views = TTA_VIEWS[mode]
    if height != width:
        views = tuple(v for v in views if v[0] % 2 == 0)
    return [_rot(k, f) for k, f in views]
