"""``protopnet``: a mask-aware prototype network (ProtoPNet adapted to single cells).

A backbone truncated at ``feature_stage`` (receptive field in pixels: ``receptive_field()``)
and 1x1 add-on layers give a latent map z (B, D, h, w). Each of P prototypes per class is a
D-vector p; its distance to a latent patch is ``d = ||z - p|| + a * M_z`` with M_z = 1 on
background patches of the cell mask (0 inside the cell), so background never matches.
Similarity is ``log((d^2 + 1) / (d^2 + eps))``, max-pooled over patches, then a last linear
layer gives the outputs. Loss: cross-entropy + ``clst_weight`` * Clst + ``sep_weight`` * Sep
(+ L1 on off-class last-layer weights). Training stages: warm-up -> joint -> push -> last layer
(see :class:`PrototypeSchedule`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...config import TaskSpec, check_fields
from ..registry import register_family
from ..tasks import Capabilities, CytoModel, LossOutput, task_loss
from ._trunk import StageTrunk

Stage = Literal["warmup", "joint", "last_layer"]


@dataclass(frozen=True)
class ProtoPNetArgs:
    """Args of the ``protopnet`` family.

    Attributes:
        backbone, pretrained, timm_kwargs: the timm trunk (weights only from a local path).
        feature_stage: stage the trunk is cut after; sets the patch receptive field.
        prototypes_per_class: P (for regression: P per target, not class-specific, pushed onto
            the nearest in-mask patch of any crop; the last layer is a learned linear map).
        prototype_dim: latent width D of the add-on layers and prototypes.
        add_on_layers: number of 1x1 conv layers (ReLU between, sigmoid at the end).
        mask_weight: the constant a added to distances of background patches.
        mask_threshold: a latent patch is in the cell when this fraction of its pixels is.
        eps: the epsilon of the similarity.
        clst_weight, sep_weight, l1_weight: loss weights (lambda1, lambda2, last-layer L1).
        freeze_last_layer: fix the last layer at 1 (own class) / -0.5 (other classes).
        warmup_epochs, push_start, push_every, last_layer_epochs: the stage schedule.
    """

    backbone: str = "resnet10t"
    pretrained: str | bool | None = None
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    feature_stage: int = 2
    prototypes_per_class: int = 10
    prototype_dim: int = 64
    add_on_layers: int = 2
    mask_weight: float = 100.0
    mask_threshold: float = 0.5
    eps: float = 1e-4
    clst_weight: float = 0.8
    sep_weight: float = 0.08
    l1_weight: float = 1e-4
    freeze_last_layer: bool = False
    warmup_epochs: int = 5
    push_start: int = 10
    push_every: int = 10
    last_layer_epochs: int = 20

    def __post_init__(self) -> None:
        check_fields(self)
        if (
            min(self.prototypes_per_class, self.prototype_dim, self.add_on_layers, self.push_every)
            < 1
        ):
            raise ValueError(
                "protopnet: prototypes_per_class, prototype_dim, add_on_layers and push_every must be >= 1"
            )
        if self.mask_weight < 0 or self.eps <= 0 or not 0 < self.mask_threshold <= 1:
            raise ValueError(
                "protopnet: need mask_weight >= 0, eps > 0 and 0 < mask_threshold <= 1"
            )


@dataclass(frozen=True)
class PrototypeSchedule:
    """Stage plan over 0-based epochs: warm-up (trunk frozen) then joint training; after epoch
    ``push_start - 1`` and every ``push_every`` epochs after it (and after the last epoch),
    push the prototypes and then train the last layer alone for ``last_layer_epochs``."""

    warmup_epochs: int = 5
    push_start: int = 10
    push_every: int = 10
    last_layer_epochs: int = 20

    def stage(self, epoch: int) -> Stage:
        return "warmup" if epoch < self.warmup_epochs else "joint"

    def push_after(self, epoch: int, num_epochs: int | None = None) -> bool:
        done = epoch + 1
        due = done >= self.push_start and (done - self.push_start) % self.push_every == 0
        return due or (num_epochs is not None and done == num_epochs)


@dataclass(frozen=True)
class PrototypeSource:
    """Where a pushed prototype came from: crop id, latent cell, pixel box (y0, x0, y1, x1)."""

    prototype: int
    class_index: int
    source_id: Any
    row: int
    col: int
    box: tuple[int, int, int, int]
    distance: float


def background_mask(mask: Tensor, size: Sequence[int], threshold: float = 0.5) -> Tensor:
    """M_z: 1 for latent patches outside the cell, 0 inside; (B, [1,] H, W) -> (B, h, w)."""
    if mask.dim() == 3:
        mask = mask[:, None]
    inside = F.adaptive_avg_pool2d(mask.float(), tuple(size))[:, 0]  # (B, h, w) cell fraction
    return (inside < threshold).float()


def masked_distances(z: Tensor, prototypes: Tensor, background: Tensor | None, a: float) -> Tensor:
    """``d = ||z - p|| + a * M_z`` for every patch and prototype: (B, h*w, M).

    Args:
        z: latent map (B, D, h, w).
        prototypes: (M, D).
        background: M_z (B, h, w), or None (no mask).
        a: background penalty.
    """
    patches = z.flatten(2).transpose(1, 2)  # (B, h*w, D)
    exporting = torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling()
    wants_grad = torch.is_grad_enabled() and (patches.requires_grad or prototypes.requires_grad)
    if wants_grad and not exporting:  # exported graphs only predict
        d = _distances_with_matmul_backward(patches, prototypes)
    else:
        d = _cdist(patches, prototypes)
    if background is not None:
        d = d + a * background.flatten(1)[..., None]
    return d  # (B, h*w, M)


def _cdist(patches: Tensor, prototypes: Tensor) -> Tensor:
    """Euclidean distances (B, P, M) of patches (B, P, D) to prototypes (M, D), from their
    differences: never as |z|^2 + |p|^2 - 2 z.p, whose cancellation near a prototype is of the
    order of the similarity's eps (and leaves a pushed prototype a small distance from its own
    patch instead of 0). On a GPU, :func:`chunked_distances`."""
    exporting = torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling()
    if patches.is_cuda and not exporting:  # an exported graph keeps torch.cdist's one operation
        return chunked_distances(patches, prototypes)
    return torch.cdist(patches, prototypes[None], compute_mode="donot_use_mm_for_euclid_dist")


# (patches, M, D) differences formed at once on a GPU: 2^26 values, 256 MB in fp32
DIFFERENCE_VALUES = 1 << 26


@torch.jit.unused
def chunked_distances(patches: Tensor, prototypes: Tensor, limit: int = DIFFERENCE_VALUES):
    """:func:`_cdist` as a subtraction and one norm kernel per chunk of patches (in at least
    fp32, as torch.cdist under autocast). torch.cdist's direct CUDA kernel took 35% of a
    ProtoPNet's attribution pass on one H200 (91 of 258 ms of kernel time for 6,400 crops of
    64 px; ``bench/pass_profile.py``); the differences of a chunk go through the GPU's memory at
    its bandwidth instead. The same distances up to float rounding, exactly 0 for a patch equal
    to a prototype; at most ``limit`` differences at once (one patch's where those are more)."""
    b, p, d = patches.shape
    m = prototypes.shape[0]
    dtype = torch.promote_types(torch.promote_types(patches.dtype, prototypes.dtype), torch.float32)
    flat = patches.reshape(b * p, d)
    protos = prototypes.to(dtype)
    rows = max(1, limit // max(1, m * d))
    parts = [
        torch.linalg.vector_norm(flat[i : i + rows, None, :].to(dtype) - protos, dim=-1)
        for i in range(0, b * p, rows)
    ]
    out = torch.cat(parts) if parts else flat.new_zeros((0, m), dtype=dtype)
    return out.reshape(b, p, m)


class PatchDistances(torch.autograd.Function):
    """Euclidean distances of patches (B, P, D) to prototypes (M, D), (B, P, M): torch.cdist's
    exact forward with a backward of matrix products.

    torch.cdist's own CUDA backward fills a (B, M, P, D) buffer indexed with 32-bit integers:
    past 2^31 elements it writes out of bounds (pytorch issue 193099). An explain job's
    Integrated Gradients (64 steps x 128 cells = 8,192 images, 16 patches, 160 prototypes of
    128 dimensions: 2.7e9) crashed the GPU with an illegal memory access. The products need no
    such buffer: d(d_bpm)/dz_bp = (z_bp - p_m) / d_bpm, 0 where d is 0 (as torch.cdist)."""

    @staticmethod
    def forward(ctx, patches: Tensor, prototypes: Tensor) -> Tensor:
        dtype = torch.promote_types(patches.dtype, torch.float32)  # no bf16 distances
        d = _cdist(patches.to(dtype), prototypes.to(dtype))
        ctx.save_for_backward(patches, prototypes, d)
        return d

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        patches, prototypes, d = ctx.saved_tensors
        with torch.autocast(grad.device.type, enabled=False):
            z, p = patches.to(d.dtype), prototypes.to(d.dtype)
            w = torch.where(d > 0, grad.to(d.dtype) / d.clamp_min(1e-30), 0.0)  # (B, P, M)
            grad_z = grad_p = None
            if ctx.needs_input_grad[0]:
                grad_z = (z * w.sum(-1, keepdim=True) - w @ p).to(patches.dtype)
            if ctx.needs_input_grad[1]:
                pulled = torch.einsum("bpm,bpd->md", w, z)
                grad_p = (p * w.sum((0, 1))[:, None] - pulled).to(prototypes.dtype)
        return grad_z, grad_p


@torch.jit.unused
def _distances_with_matmul_backward(patches: Tensor, prototypes: Tensor) -> Tensor:
    return PatchDistances.apply(patches, prototypes)


def similarity(d: Tensor, eps: float) -> Tensor:
    """``log((d^2 + 1) / (d^2 + eps))``: large for close patches, ~0 far away."""
    d2 = d**2
    return torch.log((d2 + 1) / (d2 + eps))


@register_family("protopnet", args=ProtoPNetArgs)
class ProtoPNet(CytoModel):
    """Mask-aware prototype network; ``forward(x, mask=None)`` -> (B, outputs)."""

    capabilities = Capabilities(
        takes_mask=True, prototypes=True, staged=True, static_mask_export=True
    )

    def __init__(self, args: ProtoPNetArgs, in_chans: int, task: TaskSpec):
        super().__init__(in_chans, task)
        self.args = args
        self.trunk = StageTrunk(
            args.backbone, in_chans, args.feature_stage, args.pretrained, args.timm_kwargs
        )
        layers: list[nn.Module] = []
        width = self.trunk.out_channels
        for k in range(args.add_on_layers):
            layers += [
                nn.Conv2d(width, args.prototype_dim, 1),
                nn.ReLU() if k < args.add_on_layers - 1 else nn.Sigmoid(),
            ]
            width = args.prototype_dim
        self.add_on = nn.Sequential(*layers)
        n_proto = args.prototypes_per_class * task.num_outputs
        self.prototypes = nn.Parameter(torch.rand(n_proto, args.prototype_dim))  # (M, D)
        self.register_buffer("prototype_class", torch.arange(n_proto) // args.prototypes_per_class)
        self.last_layer = nn.Linear(n_proto, task.num_outputs, bias=not task.is_classification)
        if task.is_classification:
            with torch.no_grad():
                self.last_layer.weight.copy_(1.5 * self._identity() - 0.5)  # 1 own / -0.5 other
        elif args.freeze_last_layer:
            raise ValueError(
                "protopnet: freeze_last_layer needs a classification task (1 own class / -0.5 others)"
            )
        self.prototype_sources: list[PrototypeSource | None] = [None] * n_proto
        self.stage: Stage = "joint"
        self.set_stage("joint")

    def _identity(self) -> Tensor:
        return F.one_hot(self.prototype_class, self.task.num_outputs).T.float()  # (K, M)

    @property
    def schedule(self) -> PrototypeSchedule:
        a = self.args
        last = 0 if a.freeze_last_layer else a.last_layer_epochs
        return PrototypeSchedule(a.warmup_epochs, a.push_start, a.push_every, last)

    def latent(self, x: Tensor) -> Tensor:
        return self.add_on(self.trunk(x))  # (B, D, h, w)

    def distances(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Latent map (B, D, h, w) and masked distances (B, h*w, M)."""
        z = self.latent(x)
        bg = None if mask is None else background_mask(mask, z.shape[-2:], self.args.mask_threshold)
        return z, masked_distances(z, self.prototypes, bg, self.args.mask_weight)

    def similarities(self, d: Tensor) -> Tensor:
        """Distances -> similarities, same shape (see :func:`similarity`)."""
        return similarity(d, self.args.eps)

    def forward_pooled_mask(self, x: Tensor, inside: Tensor) -> Tensor:
        """Outputs (B, K) with the mask already pooled to the latent grid: ``inside`` (B, h, w)
        is the cell fraction of each latent patch (what ONNX export computes with a constant
        pooling kernel)."""
        background = (inside < self.args.mask_threshold).float()
        d = masked_distances(self.latent(x), self.prototypes, background, self.args.mask_weight)
        return self.last_layer(self.similarities(d.min(dim=1).values))

    def forward_with_distances(
        self, x: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Outputs (B, K) and each prototype's minimum distance over patches (B, M)."""
        _, d = self.distances(x, mask)
        min_d = d.min(dim=1).values  # (B, M)
        return self.last_layer(similarity(min_d, self.args.eps)), min_d

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.forward_with_distances(x, mask)[0]

    def compute_loss(self, x: Tensor, target: Tensor, mask: Tensor | None = None) -> LossOutput:
        output, min_d = self.forward_with_distances(x, mask)
        loss = task_loss(self.task, output, target)
        parts = {"task": loss.item()}
        if self.task.is_classification:
            own = self.prototype_class[None] == target.long()[:, None]  # (B, M)
            clst = min_d.masked_fill(~own, float("inf")).min(1).values.mean()
            sep = -min_d.masked_fill(own, float("inf")).min(1).values.mean()
            loss = loss + self.args.clst_weight * clst + self.args.sep_weight * sep
            parts |= {"clst": clst.item(), "sep": sep.item()}
        if self.last_layer.weight.requires_grad and self.args.l1_weight:
            l1 = (self.last_layer.weight * (1 - self._identity())).abs().sum()
            loss = loss + self.args.l1_weight * l1
            parts["l1"] = l1.item()
        return LossOutput(loss, output, parts)

    def set_stage(self, stage: Stage) -> None:
        """Set which parts train: ``warmup`` (add-on, prototypes, last layer), ``joint`` (all),
        ``last_layer`` (last layer only). A frozen last layer never trains."""
        if stage not in ("warmup", "joint", "last_layer"):
            raise ValueError(f"unknown stage {stage!r}; use warmup, joint or last_layer")
        self.trunk.requires_grad_(stage == "joint")
        self.add_on.requires_grad_(stage != "last_layer")
        self.prototypes.requires_grad_(stage != "last_layer")
        self.last_layer.requires_grad_(not self.args.freeze_last_layer)
        self.stage = stage

    @torch.no_grad()
    def push(
        self, batches: Iterable[tuple[Tensor, Tensor, Tensor | None, Sequence[Any] | None]]
    ) -> list[PrototypeSource]:
        """Project each prototype onto its nearest in-mask latent patch of its own class.

        Args:
            batches: ``(x, target, mask, ids)`` tuples over the training set; ``mask`` may be
                None (every patch is in the cell) and ``ids`` None (running sample index).

        Returns:
            The source of every prototype (also kept in ``prototype_sources``); prototypes
            with no eligible patch keep their value and source.
        """
        was_training = self.training
        self.eval()
        n_proto = self.prototypes.shape[0]
        best = torch.full((n_proto,), float("inf"), device=self.prototypes.device)
        best_z = self.prototypes.detach().clone()
        sources = list(self.prototype_sources)
        seen = 0
        for x, target, mask, ids in batches:
            z = self.latent(x)  # (B, D, h, w)
            b, _, h, w = z.shape
            d = masked_distances(z, self.prototypes, None, 0.0)  # (B, h*w, M)
            if mask is not None:
                bg = background_mask(mask, (h, w), self.args.mask_threshold).bool()
                d = d.masked_fill(bg.flatten(1)[..., None], float("inf"))
            if self.task.is_classification:
                own = target.long()[:, None] == self.prototype_class[None]  # (B, M)
                d = d.masked_fill(~own[:, None, :], float("inf"))
            dist, flat = d.flatten(0, 1).min(0)  # (M,) over all B*h*w patches
            patches = z.flatten(2).transpose(1, 2).flatten(0, 1)  # (B*h*w, D)
            sy, sx = x.shape[-2] / h, x.shape[-1] / w
            for m in (dist < best).nonzero().flatten().tolist():
                i, pos = divmod(int(flat[m]), h * w)
                r, c = divmod(pos, w)
                best[m], best_z[m] = dist[m], patches[flat[m]]
                box = (round(r * sy), round(c * sx), round((r + 1) * sy), round((c + 1) * sx))
                src = ids[i] if ids is not None else seen + i
                sources[m] = PrototypeSource(
                    m, int(self.prototype_class[m]), src, r, c, box, float(dist[m])
                )
            seen += b
        self.prototypes.copy_(best_z)
        self.prototype_sources = sources
        self.train(was_training)
        return sources

    def extra_state(self) -> dict[str, Any]:
        """The training stage and where each pushed prototype came from."""
        sources = [None if s is None else dataclasses.asdict(s) for s in self.prototype_sources]
        return {"stage": self.stage, "prototype_sources": sources}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        if "stage" in state:
            self.set_stage(state["stage"])
        if "prototype_sources" in state:
            self.prototype_sources = [
                None if s is None else PrototypeSource(**{**s, "box": tuple(s["box"])})
                for s in state["prototype_sources"]
            ]

    def feature_layers(self) -> dict[str, nn.Module]:
        return {f"trunk.{self.trunk.layer_path}": self.trunk.feature_layer, "add_on": self.add_on}

    def receptive_field(self) -> int:
        """Receptive field of one latent patch (and so of one prototype), in input pixels."""
        return self.trunk.receptive_field()
