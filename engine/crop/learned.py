"""The learned finder: torchvision's Mask R-CNN, built for nuclei and trained from scratch.

One input channel (the field's nuclei/cell channel, percentile-stretched to 0..1), a ResNet-FPN
backbone from random initialisation with trainable BatchNorm (nothing is downloaded), anchors
of 8-128 px for cells rather than the COCO 32-512 px. Predicted masks are painted into one
label image in order of decreasing score; a detection that keeps less than half of its mask
after higher-scoring ones is dropped as a duplicate.

A checkpoint is a directory: ``weights.pt`` + ``config.json`` (model arguments, training
settings and validation scores), from which :class:`LearnedFinder` rebuilds the model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .finders import Finder, normalise, register_finder

WEIGHTS_NAME = "weights.pt"
CONFIG_NAME = "config.json"
BACKBONES = ("resnet18", "resnet34", "resnet50")
ANCHOR_SIZES = (8, 16, 32, 64, 128)


def build_model(
    backbone: str = "resnet18",
    min_size: int = 512,
    max_size: int = 1024,
    detections: int = 512,
    roi_batch: int = 256,
    width: int = 256,
):
    """A Mask R-CNN for one-channel fields with random weights (weights=None everywhere).

    Args:
        backbone: ResNet depth of the FPN backbone.
        min_size, max_size: fields are resized so their short side is ``min_size`` (long side
            at most ``max_size``).
        detections: most cells kept per field.
        roi_batch: sampled regions per field for the box/mask heads in training.
        width: channels of the FPN and of the heads (256 as in torchvision; small for tests).
    """
    import torch.nn as nn
    from torchvision.models import resnet
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    if backbone not in BACKBONES:
        raise ValueError(f"backbone {backbone!r} is not one of {BACKBONES}")
    trunk = getattr(resnet, backbone)(weights=None, norm_layer=nn.BatchNorm2d)
    trunk.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    stage = 512 if backbone == "resnet50" else 64  # channels of layer1
    body = BackboneWithFPN(
        trunk,
        return_layers={f"layer{i}": str(i - 1) for i in range(1, 5)},
        in_channels_list=[stage, stage * 2, stage * 4, stage * 8] if backbone != "resnet50"
        else [256, 512, 1024, 2048],
        out_channels=width,
        extra_blocks=LastLevelMaxPool(),
    )  # fmt: skip
    anchors = AnchorGenerator(
        sizes=tuple((s,) for s in ANCHOR_SIZES), aspect_ratios=((0.5, 1.0, 2.0),) * 5
    )
    represent = 4 * width
    return MaskRCNN(
        body,
        num_classes=None,
        rpn_anchor_generator=anchors,
        min_size=min_size,
        max_size=max_size,
        image_mean=[0.5],
        image_std=[0.25],
        box_detections_per_img=detections,
        rpn_pre_nms_top_n_test=2000,
        rpn_post_nms_top_n_test=2000,
        box_batch_size_per_image=roi_batch,
        box_head=TwoMLPHead(width * 7 * 7, represent),
        box_predictor=FastRCNNPredictor(represent, 2),
        mask_head=MaskRCNNHeads(width, (width,) * 4, 1),
        mask_predictor=MaskRCNNPredictor(width, width, 2),
    )


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device")
    return device


def to_tensor(image: np.ndarray):
    """(H, W) field channel -> (1, H, W) float32 tensor in 0..1."""
    import torch

    return torch.from_numpy(normalise(image)[None].copy())


def paint(
    masks: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    keep: float = 0.5,
    boxes: np.ndarray | None = None,
) -> np.ndarray:
    """Instance label image from masks (N, H, W) in order of decreasing score.

    ``boxes`` (N, 4; x0, y0, x1, y1), when given, limits each mask to its box (plus 2 px), so
    painting costs the boxes' area rather than N whole fields.
    """
    h, w = masks.shape[-2:]
    labels = np.zeros((h, w), dtype=np.int32)
    n = 0
    for i in np.argsort(-scores, kind="stable"):
        if scores[i] < threshold:
            break
        if boxes is None:
            ys, xs = slice(0, h), slice(0, w)
        else:
            x0, y0, x1, y1 = boxes[i]
            ys = slice(max(int(y0) - 2, 0), min(int(np.ceil(y1)) + 2, h))
            xs = slice(max(int(x0) - 2, 0), min(int(np.ceil(x1)) + 2, w))
        m = masks[i, ys, xs] > 0.5
        region = labels[ys, xs]
        free = m & (region == 0)
        if m.sum() == 0 or free.sum() < keep * m.sum():
            continue
        n += 1
        region[free] = n
    return labels


def save_checkpoint(model, directory: str | Path, config: dict) -> Path:
    import torch

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), directory / WEIGHTS_NAME)
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    return directory


def read_checkpoint(checkpoint: str | Path | None, finder: str) -> tuple[dict, dict]:
    """(config, weights) of a finder checkpoint directory written by ``cytotune crop train``;
    an error naming the fix for a missing directory or another finder's checkpoint."""
    import torch

    train = "cytotune crop train" + ("" if finder == "learned" else f" --model {finder}")
    if checkpoint is None:
        raise ValueError(f"the {finder} finder needs --checkpoint DIR from `{train}`")
    path = Path(checkpoint)
    if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(
            f"{path} is not a finder checkpoint (needs {CONFIG_NAME} and {WEIGHTS_NAME}); "
            f"train one with `{train.replace(' train', ' train FIELDS --truth LABELS --out DIR', 1)}`"
        )
    config = json.loads((path / CONFIG_NAME).read_text())
    kind = config.get("finder", "learned")  # Mask R-CNN checkpoints name none
    if kind != finder:
        raise ValueError(f"{path} holds a {kind!r} finder checkpoint; use --finder {kind}")
    return config, torch.load(path / WEIGHTS_NAME, map_location="cpu", weights_only=True)


@register_finder("learned")
class LearnedFinder(Finder):
    """Mask R-CNN finder loaded from a ``cytotune crop train`` checkpoint (or given a model).

    Args:
        checkpoint: checkpoint directory (``weights.pt`` + ``config.json``).
        device: "auto", "cpu" or "cuda[:i]".
        score_threshold: keep detections at or above this score (default: the checkpoint's).
        batch_size: fields per forward pass in :meth:`find_many`.
        model: an in-memory model instead of a checkpoint (used by training and benchmarks).
    """

    processes = False  # its model lives on one device: one copy, in the calling process

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        device: str = "auto",
        score_threshold: float | None = None,
        batch_size: int = 4,
        model=None,
        config: dict | None = None,
    ) -> None:

        self.device = resolve_device(device)
        if model is None:
            config, state = read_checkpoint(checkpoint, "learned")
            model = build_model(**config["model"])
            model.load_state_dict(state)
        self.config = config or {}
        self.model = model.to(self.device).eval()
        default = self.config.get("score_threshold", 0.5)
        self.score_threshold = float(default if score_threshold is None else score_threshold)
        self.batch_size = int(batch_size)
        self.checkpoint = None if checkpoint is None else str(checkpoint)

    def describe(self) -> dict:
        return {
            "finder": self.name,
            "checkpoint": self.checkpoint,
            "model": self.config.get("model"),
            "score_threshold": self.score_threshold,
        }

    def find(self, image: np.ndarray) -> np.ndarray:
        return self.find_many([image])[0]

    def find_many(self, images) -> list[np.ndarray]:
        import torch

        images = list(images)
        for image in images:
            if np.ndim(image) != 2:
                raise ValueError(f"a finder takes one 2-D channel, got shape {np.shape(image)}")
        out = []
        autocast = self.device.startswith("cuda")
        with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=autocast):
            for start in range(0, len(images), self.batch_size):
                chunk = [
                    to_tensor(x).to(self.device) for x in images[start : start + self.batch_size]
                ]
                for pred in self.model(chunk):
                    keep = pred["scores"] >= self.score_threshold
                    masks = (pred["masks"][keep, 0] > 0.5).cpu().numpy()  # (N, H, W) bool
                    scores = pred["scores"][keep].float().cpu().numpy()
                    boxes = pred["boxes"][keep].float().cpu().numpy()
                    out.append(paint(masks, scores, self.score_threshold, boxes=boxes))
        return out
