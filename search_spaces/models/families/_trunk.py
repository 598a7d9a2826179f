"""timm backbones for every family: offline pretrained weights, truncated stages, receptive field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...config import close_matches

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pth", "model.pt")
_HOW_TO = (
    "Nothing is downloaded at run time. On a machine with internet, save the weights, e.g. "
    "`torch.save(timm.create_model(NAME, pretrained=True).state_dict(), 'NAME.pth')` (or a "
    "model.safetensors from the Hugging Face hub), copy the file next to your data and pass "
    "pretrained='/path/to/NAME.pth' (a file) or a directory holding model.safetensors."
)


def resolve_weights(name: str, pretrained: str | bool | None) -> Path | None:
    """The local weight file for ``pretrained`` (a file or a directory), or None.

    Raises:
        ValueError: for ``True``, hub ids, URLs and missing paths, with how to supply weights.
    """
    if pretrained is None or pretrained is False:
        return None
    how = _HOW_TO.replace("NAME", name)
    if not isinstance(pretrained, str | Path) or str(pretrained).startswith(
        ("hf-hub:", "hf_hub:", "http://", "https://", "timm/")
    ):
        raise ValueError(
            f"pretrained={pretrained!r} for {name!r}: only a local file or directory is accepted. {how}"
        )
    path = Path(pretrained).expanduser()
    if path.is_dir():
        found = [path / f for f in WEIGHT_FILES if (path / f).is_file()]
        found = found or sorted(path.glob("*.safetensors")) + sorted(path.glob("*.pth"))
        if not found:
            raise ValueError(
                f"no weight file ({', '.join(WEIGHT_FILES)}) in directory {path}. {how}"
            )
        return found[0]
    if not path.is_file():
        raise ValueError(f"pretrained weights for {name!r} not found at {path}. {how}")
    return path


def create_timm(
    name: str,
    in_chans: int,
    pretrained: str | bool | None = None,
    timm_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """``timm.create_model`` with N input channels and weights only from a local path.

    With ``in_chans != 3`` timm adapts the first convolution of pretrained weights.
    """
    import timm  # on use: its import (torchvision, torch._dynamo) costs seconds

    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r}{close_matches(name, timm.list_models())}")
    weights = resolve_weights(name, pretrained)
    extra: dict[str, Any] = {}
    if weights is not None:
        extra = {"pretrained": True, "pretrained_cfg_overlay": {"file": str(weights)}}
    return timm.create_model(name, in_chans=in_chans, **extra, **(timm_kwargs or {}), **kwargs)


class StageTrunk(nn.Module):
    """A timm backbone truncated after one feature stage: (B, C, H, W) -> (B, D, h, w).

    Args:
        name: timm model name (must support ``features_only``).
        in_chans: input channels.
        stage: feature stage index into ``feature_info`` (negative counts from the end).
        pretrained: local weight file/directory or None.
        timm_kwargs: extra ``timm.create_model`` arguments (e.g. ``channels`` for width).
    """

    def __init__(
        self,
        name: str,
        in_chans: int,
        stage: int = -1,
        pretrained: str | bool | None = None,
        timm_kwargs: dict | None = None,
    ):
        super().__init__()
        with torch.device("meta"):  # count the stages without allocating weights
            import timm

            probe = timm.create_model(name, features_only=True, **(timm_kwargs or {}))
        n_stages = len(probe.feature_info)
        if not -n_stages <= stage < n_stages:
            raise ValueError(
                f"{name!r} has {n_stages} feature stages; feature_stage={stage} is out of range"
            )
        self.stage = stage % n_stages
        self.body = create_timm(
            name, in_chans, pretrained, timm_kwargs, features_only=True, out_indices=(self.stage,)
        )
        self.out_channels: int = self.body.feature_info.channels()[-1]
        self.reduction: int = self.body.feature_info.reduction()[-1]
        self.layer_name: str = self.body.feature_info.module_name()[-1]
        self.layer_path = "body." + _find_submodule(self.body, self.layer_name)  # in this module
        self.in_chans = in_chans
        self._rf: int | None = None

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)[-1]  # (B, D, h, w)

    @property
    def feature_layer(self) -> nn.Module:
        """The deepest kept module (its output is this trunk's feature map)."""
        return self.get_submodule(self.layer_path)

    def receptive_field(self) -> int:
        """Receptive field in input pixels of one output unit (measured once, cached)."""
        if self._rf is None:
            self._rf = measure_receptive_field(self, self.in_chans)
        return self._rf


def _find_submodule(body: nn.Module, name: str) -> str:
    """Path of a feature module inside a timm features_only wrapper (layouts differ by model)."""
    names = dict(body.named_modules())
    for path in (name, name.replace(".", "_"), f"model.{name}"):
        if path in names:
            return path
    raise AssertionError(f"feature module {name!r} not found in {type(body).__name__}")


def measure_receptive_field(
    module: nn.Module, in_chans: int, size: int = 96, max_size: int = 1024
) -> int:
    """Theoretical receptive field (pixels) of the central output unit.

    Measured on a copy in eval mode whose parameters are all positive (so no branch is
    zero-initialised and no ReLU is dead): the extent of the non-zero input gradient of the
    centre unit over positive random inputs, growing the input until it no longer touches
    the border. Global-attention backbones (ViTs) see the whole input and report the largest
    probe size.
    """
    net = copy.deepcopy(module).float().eval()
    gen = torch.Generator().manual_seed(0)
    for p in net.parameters():
        p.requires_grad_(False).copy_(torch.rand(p.shape, generator=gen) + 0.5)
    device = next(net.parameters()).device  # a fold model on the GPU is probed there
    while True:
        x = torch.rand(4, in_chans, size, size, generator=gen).to(device).requires_grad_()
        out = net(x)  # (B, D, h, w)
        h, w = out.shape[-2:]
        out[:, :, h // 2, w // 2].sum().backward()
        support = x.grad.abs().sum((0, 1)) > 0  # (size, size)
        rows = support.any(1).nonzero().flatten()
        cols = support.any(0).nonzero().flatten()
        touches = rows[0] == 0 or cols[0] == 0 or rows[-1] == size - 1 or cols[-1] == size - 1
        if not touches or size >= max_size:
            return int(max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1)
        size *= 2
