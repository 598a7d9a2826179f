"""A fold checkpoint is a directory: ``model.pt`` + ``config.json`` + ``trainer.pt``.

``config.json`` holds the model config, the training config, the data contract (channels,
shape, dtype, normalisation, label map or targets) and the model's extra state (ProtoPNet stage
and prototype sources), so :func:`load_model` rebuilds the model from the directory alone.
``trainer.pt`` holds what resuming needs on top (optimiser, schedule, RNG, history). All files
load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import threading
from pathlib import Path
from typing import Any

import torch
from cytotune.engine.io import atomic_directory
from cytotune.search_spaces import ModelConfig
from cytotune.search_spaces.models import CytoModel, create_model
from torch import nn

from .config import TrainConfig
from .contract import DataContract

FORMAT = "cytotune-fold-checkpoint"
VERSION = 1
MODEL_FILE, CONFIG_FILE, TRAINER_FILE = "model.pt", "config.json", "trainer.pt"


def model_extra_state(model: nn.Module) -> dict[str, Any]:
    """What a trained model keeps outside ``state_dict`` (``CytoModel.extra_state``, e.g. a
    prototype model's stage and prototype sources), as JSON-able values."""
    return model.extra_state() if isinstance(model, CytoModel) else {}


def load_model_extra_state(model: nn.Module, extra: dict[str, Any]) -> None:
    if extra:
        model.load_extra_state(extra)


def data_contract(manifest, normalization: str) -> dict[str, Any]:
    """What the model expects as input and what its outputs mean (:class:`DataContract`), as
    ``config.json`` stores it."""
    return DataContract.of(manifest, normalization).to_dict()


def checkpoint_config(
    model_config: ModelConfig,
    train_config: TrainConfig,
    manifest,
    fold: int,
    epoch: int,
    metrics: dict | None = None,
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": model_config.to_dict(),
        "train": train_config.to_dict(),
        "data": data_contract(manifest, train_config.normalization),
        "fold": fold,
        "epoch": epoch,
        "metrics": metrics or {},
    }


def write(
    directory: str | Path, model_state: dict, trainer_state: dict, config: dict[str, Any]
) -> Path:
    """Write the three files into a temporary sibling directory, then rename it into place.

    An existing checkpoint is moved aside first and deleted after the rename, so a crash leaves
    either the old or the new checkpoint complete (plus, at worst, a hidden leftover directory).
    """
    with atomic_directory(directory) as tmp:
        torch.save(model_state, tmp / MODEL_FILE)
        torch.save(trainer_state, tmp / TRAINER_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=float))
    return Path(directory)


def read_config(directory: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a checkpoint directory, checked for format and version."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a cytotune checkpoint: {CONFIG_FILE} missing")
    config = json.loads(path.read_text())
    if config.get("format") != FORMAT or config.get("version") != VERSION:
        raise ValueError(
            f"{path} is not a {FORMAT} version {VERSION} (format={config.get('format')!r}, "
            f"version={config.get('version')!r}); re-train or use a matching cytotune"
        )
    return config


def read(directory: str | Path, device: str | torch.device = "cpu") -> tuple[dict, dict, dict]:
    """``(config, model state dict, trainer state)`` of a checkpoint directory."""
    directory = Path(directory)
    config = read_config(directory)
    model_state = torch.load(directory / MODEL_FILE, map_location=device, weights_only=True)
    trainer_state = torch.load(directory / TRAINER_FILE, map_location=device, weights_only=True)
    return config, model_state, trainer_state


def check_contract(data: dict[str, Any], manifest, directory: str | Path) -> None:
    """Raise ValueError when a dataset does not match a checkpoint's data contract."""
    trained = DataContract.from_dict(data, f"checkpoint {directory}")
    differ = DataContract.of(manifest, trained.normalization.method).mismatch(trained)
    if differ:
        key, now, then = differ
        raise ValueError(
            f"dataset {manifest.name!r} does not match checkpoint {directory}: {key} is "
            f"{list(now) if isinstance(now, tuple) else now!r}, the checkpoint was trained on "
            f"{list(then) if isinstance(then, tuple) else then!r}"
        )


def model_config_of(config: dict[str, Any]) -> ModelConfig:
    """The checkpoint's ModelConfig without pretrained-weight paths (the weights are in model.pt)."""
    model_config = ModelConfig.from_dict(config["model"])
    if getattr(model_config.args, "pretrained", None):
        model_config = model_config.replace(pretrained=None)
    return model_config


# the fold models of a trial share one architecture: built once per process, then copied (timm
# builds and initialises a ResNet-18 in 0.2 s, a copy takes 0.05 s; an explain job loads the 5
# fold models of each trial, and the quality scores load them again)
_BUILT: dict[str, nn.Module] = {}
_BUILT_MAX = 4
_BUILT_LOCK = threading.Lock()  # fold models are loaded in threads (explain workers)


def built_model(model_config: ModelConfig) -> nn.Module:
    """A new model of ``model_config`` (weights as built: load a state dict into it)."""
    key = json.dumps(model_config.to_dict(), sort_keys=True, default=str)
    with _BUILT_LOCK:
        template = _BUILT.get(key)
        if template is None:
            template = create_model(model_config)
            if len(_BUILT) >= _BUILT_MAX:
                _BUILT.pop(next(iter(_BUILT)))
            _BUILT[key] = template
    return copy.deepcopy(template)


def load_model(
    directory: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained model from ``config.json`` + ``model.pt`` alone.

    Returns:
        ``(model, config)``: the model in eval mode on ``device`` and the parsed
        ``config.json`` (``config["data"]`` says how to prepare its inputs).
    """
    directory = Path(directory)
    config = read_config(directory)
    # mapped, not read: the weights-only unpickler took 114 ms to read a ResNet-50 here and
    # 41 ms to map it (the file is written whole and renamed into place, never changed after)
    state = torch.load(directory / MODEL_FILE, map_location="cpu", weights_only=True, mmap=True)
    model = model_with_state(model_config_of(config), state)
    load_model_extra_state(model, config.get("model_extra", {}))
    return model.to(device).eval(), config


_BUILDS_EMPTY: dict[str, bool] = {}  # model config -> whether a meta-device build loads whole
# model config -> its build on the meta device: a copy of it costs a tenth of a build (3 vs 27 ms
# for a ProtoPNet here; timm builds, then initialises, each layer in Python)
_META: dict[str, nn.Module] = {}


def model_with_state(model_config: ModelConfig, state: dict[str, torch.Tensor]) -> nn.Module:
    """A model of ``model_config`` holding ``state``.

    A copy of the configuration's meta-device build (no weights allocated or initialised), the
    loaded tensors then assigned: 75 ms for a ResNet-50 on a 2-core CPU, where copying a built
    template and loading into it took 107 ms, mostly Python under the interpreter lock that the
    explain job's loading threads share (bench/load_folds.py times the whole load).
    A family whose build needs real tensors, or that keeps tensors outside its state dict, gets
    the template copy instead (decided once per configuration)."""
    key = json.dumps(model_config.to_dict(), sort_keys=True, default=str)
    if _BUILDS_EMPTY.get(key, True):
        try:
            with _BUILT_LOCK:
                template = _META.get(key)
                if template is None:
                    with torch.device("meta"):
                        template = _META[key] = create_model(model_config)
            model = copy.deepcopy(template)
            model.load_state_dict(state, assign=True)
            whole = not any(t.is_meta for t in (*model.parameters(), *model.buffers()))
        except Exception:  # noqa: BLE001 - the template path below says what is wrong
            whole = False
        _BUILDS_EMPTY[key] = whole
        if whole:
            return model
        _META.pop(key, None)
    model = built_model(model_config)
    model.load_state_dict(state)
    return model


@dataclasses.dataclass
class LoadedFold:
    """A fold model ready to predict: what every reader of fold checkpoints (explain workers and
    scores, prototype mosaics, attention maps, ``cytotune pull``) needs from the directory.

    Attributes:
        model: the model in eval mode on the device.
        config: the parsed ``config.json``.
        contract: its data contract (channels, shape, dtype, normalisation, outputs).
        offset: per-channel normalisation offset ``(C,)``, float32 on the device.
        scale: per-channel normalisation scale ``(C,)``, float32 on the device.
        takes_mask: the model's forward takes a cell mask (its declared capability).
    """

    model: nn.Module
    config: dict[str, Any]
    contract: DataContract
    offset: torch.Tensor
    scale: torch.Tensor
    takes_mask: bool

    def normalize(self, pixels) -> torch.Tensor:
        """Raw pixels ``(N, C, H, W)`` -> the normalised float32 input the model was trained on."""
        x = torch.as_tensor(pixels, dtype=torch.float32, device=self.offset.device)
        return (x - self.offset.view(1, -1, 1, 1)) / self.scale.view(1, -1, 1, 1)


def load_fold(
    directory: str | Path, device: str | torch.device = "cpu", channels_last: bool = False
) -> LoadedFold:
    """Load a fold checkpoint with its normalisation and mask input (:class:`LoadedFold`)."""
    from cytotune.search_spaces.models import capabilities_of

    model, config = load_model(directory, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    contract = DataContract.from_dict(config["data"], f"checkpoint {directory}")
    return LoadedFold(
        model,
        config,
        contract,
        torch.tensor(contract.normalization.offset, dtype=torch.float32, device=device),
        torch.tensor(contract.normalization.scale, dtype=torch.float32, device=device),
        capabilities_of(model).takes_mask,
    )
