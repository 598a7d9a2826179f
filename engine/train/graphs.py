"""CUDA graphs for the training step: forward, loss, backward and optimiser step replayed as one
graph, so a trial on small crops runs at the GPU's speed instead of the CPU's kernel-launch rate.

At 64 px a ResNet step is a few hundred small kernels; launched one by one from Python they take
longer than the GPU needs to run them (the issue's trials ran at 3-5k images/s where the GPU does
100k). A captured step is launched with one call. What it needs:
- static shapes: training batches are full (the loader drops the last partial batch);
- an optimiser whose learning rate is a device tensor that the schedule fills in place
  (torch's fused Adam/AdamW read it on the device; see ``optim.create_optimizer``);
- no host synchronisation inside the step: models trained on forward + task loss alone (not
  ProtoPNet's ``compute_loss``), without mixup / CutMix, whose lambda is drawn on the host;
- no random numbers drawn in the step (dropout, drop-path): on the GPU machine such trials
  failed before their first result with "Offset increment outside graph capture encountered
  unexpectedly" from an eager dropout. Torch's CUDA generator is process-wide: once a capture
  that draws from it goes wrong, the generator stays in capture mode and every eager draw after
  it raises, so the eager fallback below cannot rescue such a model. They train eagerly.
``graph_support`` says whether a trainer qualifies and why not; ``GraphedStep`` falls back to
eager steps (and says so once) if the capture fails.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

# Optimisers whose step reads a device-tensor learning rate without a host sync.
GRAPH_OPTIMIZERS = ("adam", "adamw")
# Eager steps on a side stream before the capture (the cuDNN / allocator warm-up torch asks for).
WARMUP_STEPS = 3


def graph_support(
    *,
    device: torch.device,
    setting: str,
    optimizer: str,
    plain_loss: bool,
    mixing: bool,
    staged: bool,
    compiled: bool,
    random_draws: bool = False,
) -> tuple[bool, str]:
    """Whether a trainer's steps can be captured, and the reason when not."""
    checks = (
        (setting == "off", "train.cuda_graphs is off"),
        (device.type != "cuda", "CUDA graphs need a CUDA device"),
        (
            optimizer not in GRAPH_OPTIMIZERS,
            f"optimizer {optimizer!r} is not one of {GRAPH_OPTIMIZERS}",
        ),
        (not plain_loss, "the model's compute_loss may synchronise with the host"),
        (mixing, "mixup / CutMix draw their mixing weight on the host"),
        (staged, "the model has a training schedule (prototype pushes)"),
        (compiled, "torch.compile manages its own graphs"),
        (random_draws, "the model draws random numbers in training (dropout, drop-path)"),
    )
    for failed, reason in checks:
        if failed:
            return False, reason
    return True, ""


def draws_random_numbers(model: nn.Module) -> bool:
    """Whether the model's training forward draws from torch's RNG (dropout, drop-path)."""
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            return True
        for name in ("drop_rate", "drop_prob", "drop_path_rate"):  # timm's functional dropout
            value = getattr(module, name, 0)
            if isinstance(value, (int, float)) and value > 0:
                return True
    return False


class GraphedStep:
    """One optimiser step, eager for the first ``WARMUP_STEPS`` batches, then a replayed graph.

    Args:
        loss_fn: ``(x, y, mask) -> loss`` (runs the model under autocast).
        model: the trained model (its parameters are updated in place by the graph).
        optimizer: an optimiser over the model's parameters with a tensor learning rate.
        clip: maximal global gradient norm, or None.

    Calling it with a batch trains on it and returns the (device) loss.
    """

    def __init__(
        self,
        loss_fn: Callable[[Tensor, Tensor, Tensor | None], Tensor],
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        clip: float | None = None,
    ) -> None:
        self.loss_fn, self.model, self.optimizer, self.clip = loss_fn, model, optimizer, clip
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: tuple[Tensor, Tensor, Tensor | None] | None = None
        self.static_loss: Tensor | None = None
        self.eager_steps = 0
        self.failed: str | None = None

    def _step(self, x: Tensor, y: Tensor, mask: Tensor | None) -> Tensor:
        loss = self.loss_fn(x, y, mask)
        loss.backward()
        if self.clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip, foreach=True)
        self.optimizer.step()
        return loss

    def _eager(self, x: Tensor, y: Tensor, mask: Tensor | None) -> Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        self.eager_steps += 1
        return self._step(x, y, mask)

    def _warm_up(self, x: Tensor, y: Tensor, mask: Tensor | None) -> Tensor:
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            loss = self._eager(x, y, mask)
        torch.cuda.current_stream(x.device).wait_stream(side)
        return loss

    def _capture(self, x: Tensor, y: Tensor, mask: Tensor | None) -> None:
        for group in self.optimizer.param_groups:
            group["capturable"] = True  # torch refuses to capture a step() without it
            if not isinstance(group["lr"], Tensor) or group["lr"].device != x.device:
                # the schedule fills this tensor in place; the graph reads it on every replay
                group["lr"] = torch.tensor(float(group["lr"]), device=x.device)
        self.optimizer._warned_capturable_if_run_uncaptured = True  # eager fallback: no warning
        self.static = (
            x.clone(memory_format=torch.preserve_format),
            y.clone(),
            None if mask is None else mask.clone(),
        )
        self.optimizer.zero_grad(set_to_none=True)  # gradients get allocated in the graph's pool
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.static_loss = self._step(*self.static)
        self.graph = graph

    def __call__(self, x: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
        if self.failed is not None:
            return self._eager(x, y, mask)
        if self.graph is None:
            if self.eager_steps < WARMUP_STEPS:
                return self._warm_up(x, y, mask)
            try:
                self._capture(x, y, mask)
            except RuntimeError as error:  # an op that cannot be captured: train eagerly
                self.failed = str(error).splitlines()[0]
                self.graph = self.static = self.static_loss = None
                warnings.warn(
                    f"CUDA graph capture failed ({self.failed}); training this fold eagerly",
                    RuntimeWarning,
                    stacklevel=2,
                )
                return self._eager(x, y, mask)
        static_x, static_y, static_mask = self.static
        if x.shape != static_x.shape:  # a batch of another size (never, with drop_last)
            return self._eager(x, y, mask)
        static_x.copy_(x)
        static_y.copy_(y)
        if static_mask is not None:
            static_mask.copy_(mask)
        self.graph.replay()
        return self.static_loss

    @property
    def captured(self) -> bool:
        return self.graph is not None
