"""``small_cnn``: the microtubule paper's searched plain CNN (conv blocks + dense layers)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from ...config import TaskSpec, check_fields
from ..registry import register_family
from ..tasks import CytoModel, TaskHead


@dataclass(frozen=True)
class SmallCNNArgs:
    """Args of the ``small_cnn`` family.

    Attributes:
        conv_layers: number of conv blocks (search: 1-5).
        filters: filters of every block, or one width per block (search: 8-256).
        kernel_size: square kernel with "same" padding (search: 2-5).
        pool: 2x2 max-pooling after each block (skipped once the map is 1 px).
        batch_norm: BatchNorm after each convolution.
        dense_layers: hidden dense layers before the output (search: 1-4).
        dense_units: width of each dense layer (search: 16-512).
        dropout: dropout after each dense layer.
        l2: L2 penalty carried for the trainer (applied as weight decay, not inside the model).
    """

    conv_layers: int = 3
    filters: int | tuple[int, ...] = 32
    kernel_size: int = 3
    pool: bool = True
    batch_norm: bool = False
    dense_layers: int = 1
    dense_units: int = 128
    dropout: float = 0.25
    l2: float = 0.0

    def __post_init__(self) -> None:
        check_fields(self)
        if (
            self.conv_layers < 1
            or self.kernel_size < 1
            or self.dense_units < 1
            or self.dense_layers < 0
        ):
            raise ValueError(f"small_cnn: sizes must be positive, got {self}")
        if isinstance(self.filters, tuple) and len(self.filters) != self.conv_layers:
            raise ValueError(
                f"small_cnn: {len(self.filters)} filter widths for {self.conv_layers} conv layers"
            )
        if not 0.0 <= self.dropout < 1.0 or self.l2 < 0:
            raise ValueError(
                f"small_cnn: dropout must be in [0, 1) and l2 >= 0, got {self.dropout}, {self.l2}"
            )

    @property
    def widths(self) -> tuple[int, ...]:
        return (
            self.filters if isinstance(self.filters, tuple) else (self.filters,) * self.conv_layers
        )


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, batch_norm: bool, pool: bool):
        super().__init__()
        left = (kernel - 1) // 2  # "same" padding, also for even kernels
        self.pad = nn.ZeroPad2d((left, kernel - 1 - left, left, kernel - 1 - left))
        self.conv = nn.Conv2d(cin, cout, kernel, bias=not batch_norm)
        self.norm = nn.BatchNorm2d(cout) if batch_norm else nn.Identity()
        self.act = nn.ReLU(inplace=True)
        self.pool = pool

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.norm(self.conv(self.pad(x))))
        if self.pool and min(x.shape[-2:]) >= 2:
            x = F.max_pool2d(x, 2)
        return x


@register_family("small_cnn", args=SmallCNNArgs)
class SmallCNN(CytoModel):
    """Conv blocks, global average pooling, dense layers, task head."""

    def __init__(self, args: SmallCNNArgs, in_chans: int, task: TaskSpec):
        super().__init__(in_chans, task)
        widths = (in_chans, *args.widths)
        self.blocks = nn.Sequential(
            *(
                ConvBlock(a, b, args.kernel_size, args.batch_norm, args.pool)
                for a, b in zip(widths, widths[1:])
            )
        )
        self.head = TaskHead(
            widths[-1], task, (args.dense_units,) * args.dense_layers, args.dropout
        )
        self.l2 = args.l2

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(x)  # (B, F, h, w)
        return self.head(x.mean((2, 3)))  # (B, outputs)

    def feature_layers(self) -> dict[str, nn.Module]:
        return {f"blocks.{i}": block for i, block in enumerate(self.blocks)}
