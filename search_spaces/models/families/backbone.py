"""``backbone``: any timm model by name with N input channels and a task head."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from ...config import TaskSpec, check_fields
from ..registry import register_family
from ..tasks import CytoModel, TaskHead
from ._trunk import create_timm


@dataclass(frozen=True)
class BackboneArgs:
    """Args of the ``backbone`` family.

    Attributes:
        backbone: timm model name (``timm.list_models()``).
        pretrained: local weight file or directory, or None for random init.
        timm_kwargs: extra ``timm.create_model`` arguments (e.g. ``{"channels": [16, 32, 64, 128]}``).
        drop_rate: timm dropout before the (removed) classifier.
        mlp: hidden widths of the task head.
        dropout: dropout after each hidden layer of the head.
        stem_pool: keep the max-pool of the stem (ResNet-style models). False halves the
            downsampling before the first stage, which small crops (<= 64 px, where the
            ImageNet stem leaves a 2x2 final map) usually reward, at ~2-4x the compute.
    """

    backbone: str = "resnet10t"
    pretrained: str | bool | None = None
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    drop_rate: float = 0.0
    mlp: tuple[int, ...] = ()
    dropout: float = 0.0
    stem_pool: bool = True

    def __post_init__(self) -> None:
        check_fields(self)
        for name in ("drop_rate", "dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")


@register_family("backbone", args=BackboneArgs)
class BackboneModel(CytoModel):
    """A timm backbone (global-pooled features) followed by a task head."""

    def __init__(self, args: BackboneArgs, in_chans: int, task: TaskSpec):
        super().__init__(in_chans, task)
        self.backbone = create_timm(
            args.backbone,
            in_chans,
            args.pretrained,
            args.timm_kwargs,
            num_classes=0,
            drop_rate=args.drop_rate,
        )
        if not args.stem_pool:
            if not isinstance(getattr(self.backbone, "maxpool", None), nn.MaxPool2d):
                raise ValueError(
                    f"stem_pool=False needs a model with a stem max-pool (ResNet family); "
                    f"{args.backbone} has none: keep stem_pool=True for it"
                )
            self.backbone.maxpool = nn.Identity()
        self.head = TaskHead(self.backbone.num_features, task, args.mlp, args.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))  # (B, C, H, W) -> (B, F) -> (B, outputs)

    def feature_layers(self) -> dict[str, nn.Module]:
        names = [info["module"] for info in self.backbone.feature_info]
        return {f"backbone.{n}": self.backbone.get_submodule(n) for n in names}
