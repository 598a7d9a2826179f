"""Task heads, losses, metrics and explanation score functions shared by every family.

Classification (binary = two logits, multiclass = K logits) uses softmax cross-entropy;
regression has one head per continuous target, MSE loss and R^2 per target.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import TaskSpec


def mlp(in_features: int, hidden: Sequence[int], dropout: float) -> tuple[nn.Sequential, int]:
    """Linear -> ReLU -> Dropout per hidden width; returns the stack and its output width."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        in_features = width
    return nn.Sequential(*layers), in_features


class TaskHead(nn.Module):
    """Optional MLP then the task output: K logits, or one linear head per regression target.

    Args:
        in_features: width of the pooled features.
        task: the task spec.
        hidden: MLP widths before the output (paper head: ``(1024, 512)``).
        dropout: dropout after each hidden layer.
    """

    def __init__(
        self, in_features: int, task: TaskSpec, hidden: Sequence[int] = (), dropout: float = 0.0
    ):
        super().__init__()
        self.task = task
        self.mlp, width = mlp(in_features, hidden, dropout)
        if task.is_classification:
            self.out = nn.Linear(width, task.num_outputs)
        else:
            self.out = nn.ModuleList(nn.Linear(width, 1) for _ in range(task.num_outputs))

    def forward(self, x: Tensor) -> Tensor:
        x = self.mlp(x)  # (B, width)
        if isinstance(self.out, nn.ModuleList):
            return torch.cat([head(x) for head in self.out], dim=1)  # (B, T)
        return self.out(x)  # (B, K)


def task_loss(task: TaskSpec, output: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy (``target`` class indices, (B,)) or MSE (``target`` (B, T) or (B,))."""
    if task.is_classification:
        return F.cross_entropy(output, target.long())
    return F.mse_loss(output, target.float().reshape(output.shape))


def r2_score(pred: Tensor, target: Tensor) -> Tensor:
    """Coefficient of determination per target column: (T,) for (B, T) inputs."""
    target = target.float().reshape(pred.shape)
    ss_res = ((target - pred) ** 2).sum(0)
    ss_tot = ((target - target.mean(0)) ** 2).sum(0).clamp_min(1e-12)
    return 1 - ss_res / ss_tot


def task_metrics(task: TaskSpec, output: Tensor, target: Tensor) -> dict[str, float]:
    """``accuracy`` for classification; ``r2`` (mean) and ``r2/<target>`` for regression."""
    output = output.detach()
    if task.is_classification:
        return {"accuracy": (output.argmax(1) == target.long()).float().mean().item()}
    r2 = r2_score(output, target)
    names = task.target_names or tuple(str(i) for i in range(task.num_outputs))
    return {"r2": r2.mean().item(), **{f"r2/{n}": v.item() for n, v in zip(names, r2)}}


def task_score(task: TaskSpec, output: Tensor, target: int | Tensor) -> Tensor:
    """The scalar per sample an explainer differentiates: class logit or target prediction.

    For regression the score is the prediction itself ("higher prediction": attributions
    show what pushes the target up).

    Args:
        output: model output (B, K) or (B, T).
        target: an output index, or a (B,) tensor of indices.

    Returns:
        (B,) scores.
    """
    if isinstance(target, int):
        if not 0 <= target < output.shape[1]:
            raise ValueError(f"target {target} out of range for {output.shape[1]} outputs")
        return output[:, target]
    return output.gather(1, target.long().view(-1, 1)).squeeze(1)


@dataclass
class LossOutput:
    """What ``model.compute_loss`` returns: total loss, model output and named loss parts."""

    loss: Tensor
    output: Tensor
    parts: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Capabilities:
    """What a family can do beyond forward/loss/score; the engine and the explain job dispatch
    on these flags, never on family names.

    Each flag promises the hooks listed (checked when the family is registered):

    Attributes:
        takes_mask: ``forward(x, mask=None)`` and ``compute_loss(..., mask=...)`` use the cell
            mask (B, 1, H, W); the trainer loads masks, exports get a ``mask`` input.
        prototypes: a prototype model: ``prototypes`` (M, D), ``prototype_class`` (M,),
            ``distances(x, mask=None) -> (z (B, D, h, w), d (B, h*w, M))``,
            ``similarities(d)`` (same shape as ``d``), ``receptive_field()`` (pixels);
            the explain job draws prototype mosaics and scores prototype diversity.
        attention_maps: after a forward, ``attention_weights`` is ``{name: (B, heads, Tq, Tk)}``
            (name ``"i-j"``: queries from channel i, keys from channel j; ``"all"``: all
            channels); keys must form a square token grid. The explain job draws them.
        staged: a staged training recipe: ``schedule`` (with ``stage(epoch)``,
            ``push_after(epoch, num_epochs)``, ``last_layer_epochs``), ``set_stage(stage)`` and
            ``push(batches)``; the trainer follows it (and turns EMA, mixing, graphs off).
        static_mask_export: ``forward_pooled_mask(x, inside)`` takes the mask already pooled to
            the latent grid (B, h, w), so ONNX export can pool it with a constant kernel.
    """

    takes_mask: bool = False
    prototypes: bool = False
    attention_maps: bool = False
    staged: bool = False
    static_mask_export: bool = False

    def hooks(self) -> dict[str, tuple[str, ...]]:
        """The attributes each declared flag needs, ``{flag: (attribute, ...)}``."""
        return {flag: attrs for flag, attrs in HOOKS.items() if getattr(self, flag)}


# What each capability promises to be present on the model class.
HOOKS: dict[str, tuple[str, ...]] = {
    "takes_mask": (),  # checked on forward's signature by the registry
    "prototypes": ("distances", "similarities", "receptive_field"),
    "attention_maps": ("attention_weights",),
    "staged": ("schedule", "set_stage", "push"),
    "static_mask_export": ("forward_pooled_mask", "latent"),
}


def capabilities_of(model: object) -> Capabilities:
    """The capabilities of a model, a model class or a registered family name; models that are
    not :class:`CytoModel` subclasses have none."""
    if isinstance(model, str):
        from .registry import get_family

        model = get_family(model).model_cls
    return getattr(model, "capabilities", None) or Capabilities()


class CytoModel(nn.Module):
    """Base of every family: task, loss, score and the layers explainers hook.

    Subclasses implement ``forward`` and ``feature_layers`` and declare what else they do in
    the class attribute ``capabilities`` (see :class:`Capabilities`); nothing outside the
    family's own file needs to know its name.
    """

    family_name: str = ""
    capabilities: Capabilities = Capabilities()
    # Fewest input channels the family makes sense for; a search leaves the family out (and
    # says so) on datasets with fewer.
    min_in_chans: int = 1
    # L2 penalty the trainer adds to the optimiser's weight decay (e.g. small_cnn's ``l2`` arg).
    l2: float = 0.0

    def __init__(self, in_chans: int, task: TaskSpec):
        super().__init__()
        self.in_chans = in_chans
        self.task = task

    def feature_layers(self) -> dict[str, nn.Module]:
        """Modules whose output feature maps explainers hook, shallow to deep, keyed by their
        path in the model (``model.get_submodule(name)``)."""
        raise NotImplementedError

    @property
    def target_layer(self) -> nn.Module:
        """The default Grad-CAM layer: the deepest feature layer."""
        return list(self.feature_layers().values())[-1]

    def compute_loss(self, x: Tensor, target: Tensor, mask: Tensor | None = None) -> LossOutput:
        """Forward pass and task loss; ``mask`` is used by families that take cell masks."""
        output = self(x)
        loss = task_loss(self.task, output, target)
        return LossOutput(loss, output, {"task": loss.item()})

    def score(self, output: Tensor, target: int | Tensor) -> Tensor:
        """Per-sample explanation score, see :func:`task_score`."""
        return task_score(self.task, output, target)

    def metrics(self, output: Tensor, target: Tensor) -> dict[str, float]:
        return task_metrics(self.task, output, target)

    def extra_state(self) -> dict[str, Any]:
        """Trained state outside ``state_dict``, as JSON-able values (checkpoints keep it in
        ``config.json`` as ``model_extra``); none by default."""
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no extra state, got {sorted(state)}")
