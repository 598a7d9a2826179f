"""Multi-attention channel networks (the seed paper's RGB and MHL families, for N channels).

``channel_attention`` ("RGB"): an isolator splits the N channels; each goes through a backbone
(shared or separate weights); its feature map becomes tokens; one multi-head attention block per
channel pair i <= j (N(N+1)/2 blocks; i = j is self-attention; Q from i, K and V from j);
pooled block outputs are concatenated and fed to an MLP head.

``mhl_attention``: all channels through one backbone, self-attention over its tokens, same head.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...config import TaskSpec, check_fields
from ..registry import register_family
from ..tasks import Capabilities, CytoModel, TaskHead
from ._trunk import StageTrunk


@dataclass(frozen=True)
class MHLAttentionArgs:
    """Args of the ``mhl_attention`` family (``channel_attention`` adds ``shared_backbone``).

    Attributes:
        backbone: timm model name (must support ``features_only``).
        pretrained: local weight file or directory, or None.
        timm_kwargs: extra ``timm.create_model`` arguments.
        feature_stage: backbone stage whose feature map becomes tokens (-1 = last).
        embed_dim: token width E after projection.
        heads: attention heads (paper: 2); must divide ``embed_dim``.
        token_layout: ``spatial`` (one token per feature-map position) or ``gridK``
            (feature map average-pooled to K x K tokens, e.g. ``grid4``).
        attn_dropout: dropout on attention weights.
        mlp: hidden widths of the head (paper: 1024, 512).
        dropout: dropout after each hidden layer of the head.
    """

    backbone: str = "resnet10t"
    pretrained: str | bool | None = None
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    feature_stage: int = -2
    embed_dim: int = 64
    heads: int = 2
    token_layout: str = "spatial"
    attn_dropout: float = 0.0
    mlp: tuple[int, ...] = (1024, 512)
    dropout: float = 0.5

    def __post_init__(self) -> None:
        check_fields(self)
        if self.heads < 1 or self.embed_dim % self.heads:
            raise ValueError(
                f"embed_dim ({self.embed_dim}) must be a multiple of heads ({self.heads})"
            )
        if not re.fullmatch(r"spatial|grid[1-9]\d*", self.token_layout):
            raise ValueError(
                f"token_layout {self.token_layout!r}: use 'spatial' or 'gridK' (e.g. 'grid4')"
            )
        for name in ("attn_dropout", "dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")


@dataclass(frozen=True)
class ChannelAttentionArgs(MHLAttentionArgs):
    """Args of ``channel_attention``: those of ``mhl_attention`` plus ``shared_backbone``
    (one backbone for all channels, or one per channel)."""

    shared_backbone: bool = True


class Tokenizer(nn.Module):
    """Feature map -> projected, normalised tokens: (B, D, h, w) -> (B, T, E)."""

    def __init__(self, in_dim: int, embed_dim: int, layout: str):
        super().__init__()
        self.grid = None if layout == "spatial" else int(layout[4:])
        self.proj = nn.Linear(in_dim, embed_dim)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, fmap: Tensor) -> Tensor:
        if self.grid is not None:
            fmap = F.adaptive_avg_pool2d(fmap, self.grid)  # (B, D, K, K)
        return self.norm(self.proj(fmap.flatten(2).transpose(1, 2)))  # (B, T, E)


class AttentionBlock(nn.Module):
    """Multi-head attention with residual and LayerNorm; queries from one token set, keys and
    values from another. Keeps the last attention weights (B, heads, Tq, Tk), detached."""

    def __init__(self, embed_dim: int, heads: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(embed_dim, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(embed_dim)
        self.weights: Tensor | None = None

    def forward(self, q: Tensor, kv: Tensor) -> Tensor:
        out, weights = self.attn(q, kv, kv, need_weights=True, average_attn_weights=False)
        self.weights = weights.detach()  # (B, heads, Tq, Tk)
        return self.norm(q + out)  # (B, Tq, E)


def _trunk(args: MHLAttentionArgs, in_chans: int) -> StageTrunk:
    return StageTrunk(
        args.backbone, in_chans, args.feature_stage, args.pretrained, args.timm_kwargs
    )


@register_family("channel_attention", args=ChannelAttentionArgs)
class ChannelAttentionNet(CytoModel):
    """Per-channel backbones with one cross-attention block per channel pair (i <= j).

    ``attention_weights`` maps ``"i-j"`` to the last forward's weights (B, heads, Ti, Tj).
    """

    capabilities = Capabilities(attention_maps=True)
    min_in_chans = 2  # cross-attention between channel pairs needs two channels

    def __init__(self, args: ChannelAttentionArgs, in_chans: int, task: TaskSpec):
        super().__init__(in_chans, task)
        n_trunks = 1 if args.shared_backbone else in_chans
        self.trunks = nn.ModuleList(_trunk(args, 1) for _ in range(n_trunks))
        self.tokenizers = nn.ModuleList(
            Tokenizer(self.trunks[0].out_channels, args.embed_dim, args.token_layout)
            for _ in range(n_trunks)
        )
        self.pairs = [(i, j) for i in range(in_chans) for j in range(i, in_chans)]
        self.blocks = nn.ModuleList(
            AttentionBlock(args.embed_dim, args.heads, args.attn_dropout) for _ in self.pairs
        )
        self.head = TaskHead(len(self.pairs) * args.embed_dim, task, args.mlp, args.dropout)

    def channel_tokens(self, x: Tensor) -> list[Tensor]:
        """Isolator + backbones + tokenizers: (B, N, H, W) -> N x (B, T, E)."""
        b, n = x.shape[:2]
        if len(self.trunks) == 1:
            fmap = self.trunks[0](x.reshape(b * n, 1, *x.shape[2:]))  # (B*N, D, h, w)
            tokens = self.tokenizers[0](fmap)  # (B*N, T, E)
            return list(tokens.reshape(b, n, *tokens.shape[1:]).unbind(1))
        channels = x.split(1, dim=1)  # N x (B, 1, H, W)
        return [tok(trunk(c)) for trunk, tok, c in zip(self.trunks, self.tokenizers, channels)]

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] != self.in_chans:
            raise ValueError(f"expected {self.in_chans} channels, got input {tuple(x.shape)}")
        tokens = self.channel_tokens(x)
        pooled = [
            block(tokens[i], tokens[j]).mean(1) for (i, j), block in zip(self.pairs, self.blocks)
        ]
        return self.head(torch.cat(pooled, dim=1))  # (B, P*E) -> (B, outputs)

    @property
    def attention_weights(self) -> dict[str, Tensor]:
        """Per-pair attention weights of the last forward, ``{"i-j": (B, heads, Ti, Tj)}``."""
        return {
            f"{i}-{j}": blk.weights
            for (i, j), blk in zip(self.pairs, self.blocks)
            if blk.weights is not None
        }

    def feature_layers(self) -> dict[str, nn.Module]:
        """Per-trunk feature modules; with a shared trunk its output is (B*N, D, h, w)."""
        return {f"trunks.{k}.{t.layer_path}": t.feature_layer for k, t in enumerate(self.trunks)}

    def receptive_field(self) -> int:
        return self.trunks[0].receptive_field()


@register_family("mhl_attention", args=MHLAttentionArgs)
class MHLAttentionNet(CytoModel):
    """All channels through one backbone, self-attention over its tokens, MLP head.

    ``attention_weights`` is ``{"all": (B, heads, T, T)}`` after a forward.
    """

    capabilities = Capabilities(attention_maps=True)

    def __init__(self, args: MHLAttentionArgs, in_chans: int, task: TaskSpec):
        super().__init__(in_chans, task)
        self.trunk = _trunk(args, in_chans)
        self.tokenizer = Tokenizer(self.trunk.out_channels, args.embed_dim, args.token_layout)
        self.block = AttentionBlock(args.embed_dim, args.heads, args.attn_dropout)
        self.head = TaskHead(args.embed_dim, task, args.mlp, args.dropout)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.tokenizer(self.trunk(x))  # (B, T, E)
        return self.head(self.block(tokens, tokens).mean(1))  # (B, outputs)

    @property
    def attention_weights(self) -> dict[str, Tensor]:
        return {} if self.block.weights is None else {"all": self.block.weights}

    def feature_layers(self) -> dict[str, nn.Module]:
        return {f"trunk.{self.trunk.layer_path}": self.trunk.feature_layer}

    def receptive_field(self) -> int:
        return self.trunk.receptive_field()
