"""Faithfulness: deletion and insertion curves and their areas (RISE, Petsiuk et al. 2018).

Pixels are ranked by the attribution map. Deletion removes the most important pixels first
(sets them to a baseline) and watches the score fall: a faithful map gives a low area under the
curve. Insertion starts from the baseline and puts the most important pixels back first: a
faithful map gives a high area.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["deletion_insertion", "make_baseline"]

_BATCH_BUDGET_BYTES = 256 * 2**20  # perturbed images built at once when batch_size is None


def _blur(x: torch.Tensor, sigma: float, size: int) -> torch.Tensor:
    """Separable Gaussian blur per channel with replicate padding (any image size)."""
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = (k / k.sum()).to(dtype=x.dtype, device=x.device)
    c, pad = x.shape[1], size // 2
    out = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    out = F.conv2d(out, k.view(1, 1, 1, size).expand(c, 1, 1, size), groups=c)
    return F.conv2d(out, k.view(1, 1, size, 1).expand(c, 1, size, 1), groups=c)


def make_baseline(
    x: torch.Tensor, baseline: str | float | torch.Tensor = "zeros", blur_sigma: float = 5.0
) -> torch.Tensor:
    """The image that deleted pixels take (and insertion starts from).

    Args:
        x: ``(B, C, H, W)`` images.
        baseline: ``"zeros"``; ``"blur"`` (Gaussian blur of the image, kernel 11, as RISE uses
            for insertion); ``"mean"`` (per image and channel mean); a float constant; or a
            tensor broadcastable to ``x``.
        blur_sigma: Standard deviation of the blur in pixels.

    Returns:
        ``(B, C, H, W)`` tensor on ``x``'s device.
    """
    if isinstance(baseline, torch.Tensor):
        try:
            return baseline.to(device=x.device, dtype=x.dtype).expand_as(x)
        except RuntimeError as e:
            raise ValueError(
                f"baseline tensor of shape {tuple(baseline.shape)} does not broadcast to "
                f"{tuple(x.shape)}"
            ) from e
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(x, float(baseline))
    table = {
        "zeros": lambda: torch.zeros_like(x),
        "blur": lambda: _blur(x, blur_sigma, 11),
        "mean": lambda: x.mean(dim=(2, 3), keepdim=True).expand_as(x),
    }
    if baseline not in table:
        raise ValueError(
            f"unknown baseline {baseline!r}; use 'zeros', 'blur', 'mean', a float or a tensor"
        )
    return table[baseline]()


def _scores(model_fn: Callable, batch: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    out = model_fn(batch)
    if not isinstance(out, torch.Tensor):
        out = torch.as_tensor(np.asarray(out))
    out = out.detach()
    if target is None:
        if out.ndim == 2 and out.shape[1] == 1:
            out = out[:, 0]
        if out.shape != (len(batch),):
            raise ValueError(
                f"model_fn returned shape {tuple(out.shape)}; without target it must return one "
                f"score per image ({len(batch)},), or pass target= to pick a column of (N, K)"
            )
        return out.double().cpu()
    if out.ndim != 2 or out.shape[0] != len(batch):
        raise ValueError(f"with target, model_fn must return (N, K) scores, got {out.shape}")
    return out.gather(1, target.to(out.device).view(-1, 1))[:, 0].double().cpu()


def _auc(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Trapezoid rule along the last axis."""
    return ((y[..., 1:] + y[..., :-1]) / 2 * np.diff(x)).sum(axis=-1)


@torch.no_grad()
def deletion_insertion(
    model_fn: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    maps: Any,
    steps: int = 20,
    baseline: str | float | torch.Tensor = "zeros",
    batch_size: int | None = None,
    target: Any = None,
    normalize: bool = False,
    blur_sigma: float = 5.0,
) -> dict[str, Any]:
    """Deletion and insertion AUC of attribution maps.

    Pixels are ranked by the map in descending order (ties: row-major order); all channels of a
    pixel move together. Step ``k`` of ``steps`` perturbs the top ``floor(k * H * W / steps)``
    pixels, so each curve has ``steps + 1`` points on the fraction axis ``n_k / (H * W)`` from 0
    to 1, and the AUC is the trapezoid rule over that axis.

    Scores are the raw outputs of ``model_fn`` (the standard: a probability or logit), so AUCs
    compare across methods on the same model and images. ``normalize=True`` divides each curve
    by the unperturbed image's score instead (undefined, NaN, where that score is 0).

    Perturbed images for many (image, step) pairs are built at once, ``batch_size`` per call of
    ``model_fn``; states shared by both curves (the full image and the full baseline) are scored
    once.

    Args:
        model_fn: Maps ``(N, C, H, W)`` images to scores ``(N,)`` -- or to ``(N, K)`` when
            ``target`` is given. Called under ``torch.no_grad()``.
        x: ``(B, C, H, W)`` images.
        maps: ``(B, H, W)``, ``(B, 1, H, W)`` or ``(B, C, H, W)`` attributions (channels are
            summed); array or tensor.
        steps: Number of equal chunks of pixels (>= 1).
        baseline: See :func:`make_baseline`.
        batch_size: Perturbed images per ``model_fn`` call; ``None`` fits about 256 MiB.
        target: Optional ``(B,)`` class index per image, picking the score column.
        normalize: Divide curves by the unperturbed score.
        blur_sigma: Sigma of the ``"blur"`` baseline.

    Returns:
        ``deletion_auc`` and ``insertion_auc`` as ``(B,)`` numpy arrays, and ``curves`` with
        ``fraction`` ``(steps + 1,)``, ``deletion`` and ``insertion`` ``(B, steps + 1)``.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"x must be a (B, C, H, W) tensor, got {getattr(x, 'shape', type(x))}")
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    b, c, h, w = x.shape
    m = torch.as_tensor(maps).detach().to(device=x.device, dtype=torch.float64)
    if m.ndim == 4:
        m = m.sum(dim=1)
    if m.shape != (b, h, w):
        raise ValueError(
            f"maps have shape {tuple(torch.as_tensor(maps).shape)}; expected (B, H, W) or "
            f"(B, C, H, W) matching x {tuple(x.shape)}"
        )
    if target is not None:
        target = torch.as_tensor(target, dtype=torch.long).view(-1)
        if target.shape != (b,):
            raise ValueError(f"target must have one class index per image ({b},)")
    n_pix = h * w
    order = torch.argsort(m.view(b, n_pix), dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(n_pix, device=x.device).expand(b, n_pix))  # (B, HW)
    counts = torch.arange(steps + 1, device=x.device) * n_pix // steps  # (K+1,)
    base = make_baseline(x, baseline, blur_sigma)

    # Jobs: deletion at k = 0..steps, insertion at k = 1..steps-1 (its ends equal deletion's).
    job_k = torch.cat([torch.arange(steps + 1), torch.arange(1, steps)]).to(x.device)
    job_ins = torch.arange(len(job_k), device=x.device) > steps
    n_jobs = len(job_k)
    if batch_size is None:
        batch_size = max(1, _BATCH_BUDGET_BYTES // (c * n_pix * x.element_size()))
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")

    scores = torch.empty(b * n_jobs, dtype=torch.float64)
    for start in range(0, b * n_jobs, int(batch_size)):
        rows = torch.arange(start, min(start + int(batch_size), b * n_jobs), device=x.device)
        img, job = rows // n_jobs, rows % n_jobs
        top = rank[img] < counts[job_k[job]][:, None]  # (n, HW): pixel among the top n_k
        swap = (top ^ job_ins[job][:, None]).view(-1, 1, h, w)
        batch = torch.where(swap, base[img], x[img])  # (n, C, H, W)
        tgt = None if target is None else target[img.cpu()]
        scores[start : start + len(rows)] = _scores(model_fn, batch, tgt)

    scores = scores.view(b, n_jobs).numpy()
    deletion = scores[:, : steps + 1]
    insertion = np.concatenate(
        [deletion[:, steps:], scores[:, steps + 1 :], deletion[:, :1]], axis=1
    )
    if normalize:
        with np.errstate(divide="ignore", invalid="ignore"):
            ref = np.where(deletion[:, :1] == 0, np.nan, deletion[:, :1])
            deletion, insertion = deletion / ref, insertion / ref
    fraction = counts.cpu().numpy() / n_pix
    return {
        "deletion_auc": _auc(deletion, fraction),
        "insertion_auc": _auc(insertion, fraction),
        "curves": {"fraction": fraction, "deletion": deletion, "insertion": insertion},
    }
