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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .finders import Finder, normalise, register_finder

WEIGHTS_NAME = "weights.pt"
CONFIG_NAME = "config.json"
BACKBONES = ("resnet18", "resnet34", "resnet50")
ANCHOR_SIZES = (8, 16, 32, 64, 128)
MARGIN = 2  # px around a box where its mask may still reach


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


def box_slices(box, shape: tuple[int, int]) -> tuple[slice, slice]:
    """Rows and columns of a box (x0, y0, x1, y1) plus ``MARGIN`` px, inside a field of ``shape``."""
    x0, y0, x1, y1 = box
    h, w = shape
    return (
        slice(max(int(y0) - MARGIN, 0), min(int(np.ceil(y1)) + MARGIN, h)),
        slice(max(int(x0) - MARGIN, 0), min(int(np.ceil(x1)) + MARGIN, w)),
    )


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


SCORE_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MASK_GRID = (0.4, 0.5, 0.6, 0.7, 0.8)


@dataclass(frozen=True)
class Detections:
    """One field's detections: scores (descending), boxes as pixel slices (box + ``MARGIN``)
    and each mask's probabilities inside its slice (uint8, 0..255)."""

    shape: tuple[int, int]
    scores: np.ndarray
    slices: list[tuple[slice, slice]]
    masks: list[np.ndarray]

    @classmethod
    def from_prediction(cls, pred: dict, shape: tuple[int, int], floor: float) -> Detections:
        """From a torchvision Mask R-CNN output (masks (N, 1, H, W) in 0..1) for one field."""
        import torch

        keep = pred["scores"] >= floor
        scores = pred["scores"][keep].float()
        order = torch.argsort(scores, descending=True, stable=True)
        scores = scores[order].cpu().numpy()
        boxes = pred["boxes"][keep][order].float().cpu().numpy()
        probs = pred["masks"][keep][order, 0]
        slices = [box_slices(box, shape) for box in boxes]
        if not slices:
            return cls(shape, scores, [], [])
        flat = torch.cat([probs[i, ys, xs].flatten() for i, (ys, xs) in enumerate(slices)])
        flat = (flat.float() * 255).round().to(torch.uint8).cpu().numpy()  # one copy off the GPU
        sizes = [(ys.stop - ys.start) * (xs.stop - xs.start) for ys, xs in slices]
        ends = np.cumsum(sizes)
        masks = [
            flat[end - size : end].reshape(ys.stop - ys.start, xs.stop - xs.start)
            for end, size, (ys, xs) in zip(ends, sizes, slices)
        ]
        return cls(shape, scores, slices, masks)

    def arrays(self) -> dict[str, np.ndarray]:
        """The detections as flat arrays (for ``np.savez``); :meth:`from_arrays` reads them."""
        bounds = [(ys.start, ys.stop, xs.start, xs.stop) for ys, xs in self.slices]
        return {
            "shape": np.array(self.shape, np.int64),
            "scores": self.scores.astype(np.float32),
            "bounds": np.array(bounds, np.int64).reshape(-1, 4),
            "masks": np.concatenate([m.ravel() for m in self.masks] or [np.zeros(0, np.uint8)]),
        }

    @classmethod
    def from_arrays(cls, arrays: dict) -> Detections:
        bounds = np.asarray(arrays["bounds"]).reshape(-1, 4)
        slices = [(slice(y0, y1), slice(x0, x1)) for y0, y1, x0, x1 in bounds.tolist()]
        sizes = [(y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in bounds.tolist()]
        flat, ends = np.asarray(arrays["masks"]), np.cumsum(sizes)
        masks = [
            flat[e - n : e].reshape(ys.stop - ys.start, xs.stop - xs.start)
            for e, n, (ys, xs) in zip(ends, sizes, slices)
        ]
        shape = tuple(int(v) for v in arrays["shape"])
        return cls(shape, np.asarray(arrays["scores"], np.float32), slices, masks)

    def labels(self, score_threshold: float, mask_threshold: float = 0.5, keep: float = 0.5):
        """Instance label image: masks over ``mask_threshold`` of detections scored at least
        ``score_threshold``, highest score first, each where no cell is yet (one that keeps less
        than ``keep`` of itself is a duplicate, dropped). The masks are kept in steps of
        1/255: a pixel is in where ``round(255 p) > 255 * mask_threshold`` (at 0.5 that takes
        p = 0.5 in, which ``p > 0.5`` left out; the bf16 model's own step is 1/256)."""
        labels = np.zeros(self.shape, dtype=np.int32)
        cut = mask_threshold * 255
        n = 0
        for score, (ys, xs), patch in zip(self.scores, self.slices, self.masks):
            if score < score_threshold:
                break
            n += paint_one(labels, ys, xs, patch > cut, n + 1, keep)
        return labels


def paint_one(labels, ys, xs, m, label: int, keep: float) -> int:
    """Paint mask ``m`` (inside ``labels[ys, xs]``) where no cell is yet; 1 if it was painted,
    0 if it is empty or keeps less than ``keep`` of itself (a duplicate)."""
    region = labels[ys, xs]
    free = m & (region == 0)
    total = m.sum()
    if total == 0 or free.sum() < keep * total:
        return 0
    region[free] = label
    return 1


@register_finder("learned")
class LearnedFinder(Finder):
    """Mask R-CNN finder loaded from a ``cytotune crop train`` checkpoint (or given a model).

    Args:
        checkpoint: checkpoint directory (``weights.pt`` + ``config.json``).
        device: "auto", "cpu" or "cuda[:i]".
        score_threshold: keep detections at or above this score (default: the checkpoint's).
        batch_size: fields per forward pass in :meth:`find_many`.
        mask_threshold: a pixel belongs to a cell where its mask probability exceeds this
            (default: the checkpoint's, else 0.5).
        model: an in-memory model instead of a checkpoint (used by training and benchmarks).
    """

    processes = False  # its model lives on one device: one copy, in the calling process
    # Boxes scored under the floor are dropped inside the model, before their masks are pasted
    # one by one into whole fields (torchvision keeps every box over 0.05, up to 512 a field).
    # NMS only lets a higher score suppress a lower one, so the boxes over the floor are the same.
    prefilter = True

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        device: str = "auto",
        score_threshold: float | None = None,
        batch_size: int = 4,
        mask_threshold: float | None = None,
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
        default = self.config.get("mask_threshold", 0.5)
        self.mask_threshold = float(default if mask_threshold is None else mask_threshold)
        for name in ("score_threshold", "mask_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {getattr(self, name)}")
        self.batch_size = int(batch_size)
        self.checkpoint = None if checkpoint is None else str(checkpoint)

    def describe(self) -> dict:
        return {
            "finder": self.name,
            "checkpoint": self.checkpoint,
            "model": self.config.get("model"),
            "score_threshold": self.score_threshold,
            "mask_threshold": self.mask_threshold,
        }

    def find(self, image: np.ndarray) -> np.ndarray:
        return self.find_many([image])[0]

    def find_many(self, images) -> list[np.ndarray]:
        floor = self.score_threshold
        return [
            d.labels(self.score_threshold, self.mask_threshold)
            for d in self.detections(images, floor)
        ]

    def detections(self, images, floor: float) -> list[Detections]:
        """Each field's detections scored ``floor`` or more, with their soft masks, so that
        :meth:`Detections.labels` can paint them at any score and mask threshold above it."""
        import torch

        images = list(images)
        for image in images:
            if np.ndim(image) != 2:
                raise ValueError(f"a finder takes one 2-D channel, got shape {np.shape(image)}")
        out = []
        autocast = self.device.startswith("cuda")
        heads = self.model.roi_heads
        before = heads.score_thresh
        if self.prefilter:  # torchvision keeps scores strictly above its threshold
            below = float(np.nextafter(np.float32(floor), np.float32(-1)))
            heads.score_thresh = max(before, below)  # never under torchvision's own cut
        try:
            with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=autocast):
                for start in range(0, len(images), self.batch_size):
                    chunk = [
                        to_tensor(x).to(self.device)
                        for x in images[start : start + self.batch_size]
                    ]
                    for image, pred in zip(chunk, self.model(chunk)):
                        shape = tuple(image.shape[-2:])
                        out.append(Detections.from_prediction(pred, shape, floor))
        finally:
            heads.score_thresh = before
        return out


def threshold_rank(scores: dict) -> tuple[float, float]:
    """How a threshold setting is ranked: F1 at IoU 0.5 plus the Bowl's mAP (finding cells and
    outlining them count alike; mAP alone trades missed cells for tighter masks), then mAP."""
    return scores["f1"] + scores["map"], scores["map"]


def choose_thresholds(
    finder: LearnedFinder,
    items,
    score_grid=SCORE_GRID,
    mask_grid=MASK_GRID,
    limit: int | None = None,
) -> tuple[dict, list[dict]]:
    """Score and mask thresholds of the best :func:`threshold_rank` on (image, labels) pairs
    (at most ``limit`` of them, a fixed subset); sets them on ``finder``. The network runs once
    per field. Returns the choice and the scores of every grid point."""
    from .metrics import score_fields
    from .train import fixed_subset

    items = fixed_subset(items, limit)
    found = finder.detections([image for image, _ in items], min(score_grid))
    truths = [labels for _, labels in items]
    table = []
    for s in score_grid:
        for m in mask_grid:
            scores = score_fields(truths, [d.labels(s, m) for d in found])
            table.append({"score_threshold": s, "mask_threshold": m, **scores})
    best = max(table, key=threshold_rank)
    finder.score_threshold = float(best["score_threshold"])
    finder.mask_threshold = float(best["mask_threshold"])
    return {k: best[k] for k in ("score_threshold", "mask_threshold")}, table
