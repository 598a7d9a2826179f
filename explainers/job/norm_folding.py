"""Batch norms folded into the convolutions they follow, for the explain kernel.

In eval mode a ``BatchNorm2d`` is a fixed affine map per channel, so one that reads a
convolution's output folds into that convolution's weights and bias
(``torch.nn.utils.fusion.fuse_conv_bn_eval``): the model computes the same function without the
norm's elementwise pass in the forward and in the backward every attribution takes. In the
MitoCheck job's ResNet trial on one H100 the norms' kernels were about a third of an
Integrated Gradients batch's GPU time (BENCHMARKS.md, "Session 17").

Only the map workers fold (their own freshly loaded models, on the CPU before they go to the
GPU); the quality stage draws its random copies and cascades from the model as trained, whose
layers it counts. A pair is folded when a probe forward shows the norm reading the
convolution's output tensor and no other module reading it; the folding is kept only when the
model's outputs on the probe stay equal, else the original modules are put back.
``CYTOTUNE_FOLD_NORMS=0`` turns folding off.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

# the folded model's outputs on the probe must match the original's to this share of their
# largest magnitude (fp32, TF32 off: folding only reorders roundings)
TOLERANCE = 1e-4
# one crop: a norm in eval mode treats each crop alone, so more crops add no check, only CPU
# time (with 4, the two probe forwards were most of a 224 px ResNet-50's loading; with 1 a map
# worker started 1.85x as fast on the CPU: bench/worker_start.py)
PROBE_BATCH = 1


def folding_enabled() -> bool:
    from .executor import switch

    return switch("CYTOTUNE_FOLD_NORMS", default=True)


@contextlib.contextmanager
def exact(device_type: str):
    """fp32 without autocast, no autograd: folding only reorders roundings. On a GPU TF32 is
    off too; those flags are process-wide, so the map workers fold on the CPU, where their
    loading threads leave them alone."""
    if device_type != "cuda":
        with torch.no_grad(), torch.autocast(device_type, enabled=False):
            yield
        return
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.no_grad(), torch.autocast(device_type, enabled=False):
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul


def conv_norm_pairs(model: nn.Module, probe: torch.Tensor, forward_kwargs: dict):
    """``(pairs, output)``: the ``(conv name, norm name)`` pairs where an eval-mode
    ``BatchNorm2d`` (exactly that type: subclasses such as timm's ``BatchNormAct2d`` also
    activate) is the only module reading a ``Conv2d``'s output in a forward of ``probe``, and
    that forward's output."""
    leaves = {n: m for n, m in model.named_modules() if not any(True for _ in m.children())}
    produced: dict[int, tuple[str, torch.Tensor]] = {}  # tensor id -> (conv, tensor kept alive)
    readers: dict[int, list[str]] = {}
    alive: list[torch.Tensor] = []  # every tensor seen stays alive: no id is reused in the probe

    def on_input(name):
        def hook(module, args, kwargs=None):
            for value in list(args) + list((kwargs or {}).values()):
                if isinstance(value, torch.Tensor):
                    readers.setdefault(id(value), []).append(name)
                    alive.append(value)

        return hook

    def on_output(name):
        def hook(module, args, output):
            if isinstance(output, torch.Tensor):
                produced[id(output)] = (name, output)

        return hook

    handles = []
    for name, module in leaves.items():
        handles.append(module.register_forward_pre_hook(on_input(name), with_kwargs=True))
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(on_output(name)))
    try:
        with exact(probe.device.type):
            output = model(probe, **forward_kwargs)
    finally:
        for handle in handles:
            handle.remove()
    pairs = []
    for key, (conv, _) in produced.items():
        names = readers.get(key, [])
        if len(names) == 1 and type(leaves[names[0]]) is nn.BatchNorm2d:
            norm = leaves[names[0]]
            if not norm.training and norm.track_running_stats and norm.running_mean is not None:
                pairs.append((conv, names[0]))
    return pairs, output


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _equal(expected, got) -> bool:
    if not isinstance(expected, torch.Tensor) or not isinstance(got, torch.Tensor):
        return False
    expected, got = expected.float(), got.float()
    if got.shape != expected.shape:
        return False
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    return bool(((got - expected).abs() <= TOLERANCE * max(scale, 1e-12)).all())


def fold_norms(
    model: nn.Module, shape: tuple[int, ...], takes_mask: bool = False, keep: Iterable[str] = ()
) -> int:
    """Fold ``model``'s (eval mode) conv -> batch-norm pairs in place; returns how many. The
    folding stays only when the outputs on a probe of ``PROBE_BATCH`` random ``shape``
    (C, H, W) inputs (with a ``mask`` of ones when the model ``takes_mask``) stay equal; else
    the original modules are put back and 0 is returned. A pair whose convolution or norm is
    named in ``keep`` (layers a CAM reads: a folded convolution would output the norm's values)
    stays."""
    if model.training or not folding_enabled():
        return 0
    param = next(model.parameters(), None)
    if param is None:
        return 0
    generator = torch.Generator(device="cpu").manual_seed(0)
    probe = torch.randn((PROBE_BATCH, *shape), generator=generator).to(param.device)
    if param.device.type == "cuda":
        probe = probe.contiguous(memory_format=torch.channels_last)
    fk = {"mask": torch.ones_like(probe[:, :1])} if takes_mask else {}
    keep = set(keep)
    pairs, expected = conv_norm_pairs(model, probe, fk)
    # a module in two pairs (a convolution called twice, a norm shared by two) is left as is
    seen = Counter(name for pair in pairs for name in pair)
    pairs = [p for p in pairs if not keep.intersection(p) and seen[p[0]] == seen[p[1]] == 1]
    if not pairs:
        return 0
    originals: dict[str, nn.Module] = {}
    try:
        for conv, norm in pairs:
            originals[conv], originals[norm] = model.get_submodule(conv), model.get_submodule(norm)
            _replace(model, conv, fuse_conv_bn_eval(originals[conv], originals[norm]))  # new conv
            _replace(model, norm, nn.Identity())
        with exact(param.device.type):
            got = model(probe, **fk)
        if _equal(expected, got):
            return len(pairs)
    except Exception:  # noqa: BLE001 - any failure: the model as it was, unfolded
        pass
    for name, module in originals.items():
        _replace(model, name, module)
    return 0
