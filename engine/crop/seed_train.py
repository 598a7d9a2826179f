"""``cytotune crop train --model seed``: fit the seed's two-scale detector on labelled fields.

Same protocol as the Mask R-CNN trainer (:mod:`.train`, whose split, augmentation and scoring are
reused): fields split into train and validation by group, AdamW, linear warm-up then cosine
decay, flips and 90-degree turns, bf16 autocast on CUDA. Each step takes one random square crop
per field (padded where the field is smaller). The anchors are K-means++ centres of the training
boxes; positives follow YOLOv5's rule (:func:`assign`); the loss is focal objectness + GIoU.
After training the score threshold is chosen on the validation fields (best F1 at IoU 0.5; the
training fields where there is no validation) and the validation scores are written into the
checkpoint's ``config.json``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .seed import STRIDES, decode, giou
from .train import (
    augment,
    evaluate,
    fixed_subset,
    labelled_split,
    optimiser_and_schedule,
    training_record,
    training_summary,
)

THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)


@dataclass(frozen=True)
class SeedTrainOptions:
    """Settings of ``cytotune crop train --model seed``."""

    epochs: int = 40
    max_steps: int | None = None
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    widths: tuple[int, ...] = (32, 64, 128, 256)
    depths: tuple[int, ...] = (1, 2, 3, 3)
    head: int = 128
    anchors_per_level: int = 3
    crop_size: int = 384
    box_weight: float = 2.0
    iou_threshold: float = 0.5
    centre_fraction: float = 0.3
    score_threshold: float | None = None  # None: chosen on the validation fields
    val_fraction: float = 0.2
    group: str = "auto"
    channel: str | int | None = None
    channel_names: tuple[str, ...] | None = None
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        for name, lo in (
            ("epochs", 1),
            ("batch_size", 1),
            ("anchors_per_level", 1),
            ("crop_size", 32),
        ):
            if int(getattr(self, name)) < lo:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be >= {lo}, got {getattr(self, name)}"
                )
        if self.crop_size % 32:
            raise ValueError(f"--crop-size must be a multiple of 32, got {self.crop_size}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"--max-steps must be >= 1, got {self.max_steps}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"--val-fraction must be within [0, 1), got {self.val_fraction}")
        if not self.lr > 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")

    def model_args(self, anchors: np.ndarray) -> dict:
        """The :func:`~cytotune.engine.crop.seed.build_model` arguments a checkpoint records."""
        return {"anchors": np.round(anchors, 3).tolist(), "widths": list(self.widths),
                "depths": list(self.depths), "head": self.head}  # fmt: skip


def assign(boxes, anchors, sizes, ratio: float = 4.0):
    """Positive (b, a, gy, gx) positions and their true boxes, per head (YOLOv5's rule).

    An anchor takes a true box when their width and height ratios are all below ``ratio`` (the
    best anchor always does); the cell holding the box centre and its two nearest neighbouring
    cells predict it.

    Args:
        boxes: list over the batch of (n_i, 4) true boxes in pixels.
        anchors: (2, A, 2) model anchors.
        sizes: [(H8, W8), (H16, W16)] grid sizes of the heads.
    """
    import torch

    device = anchors.device
    gt = torch.cat(
        [
            torch.cat([torch.full((len(b), 1), float(i)), b.float().cpu()], 1)
            for i, b in enumerate(boxes)
        ]
        or [torch.zeros(0, 5)]
    ).to(device)  # (G, 5): image index, x0, y0, x1, y1
    wh, xy = gt[:, 3:] - gt[:, 1:3], (gt[:, 1:3] + gt[:, 3:]) / 2
    levels, per_level = anchors.shape[:2]
    r = wh[:, None] / anchors.reshape(-1, 2)[None]  # (G, L * A, 2)
    worst = torch.maximum(r, 1 / r).amax(dim=2)
    match = worst < ratio
    if len(gt):
        match[torch.arange(len(gt), device=device), worst.argmin(dim=1)] = True
    match = match.view(len(gt), levels, per_level)
    out = []
    for level, (stride, (h, w)) in enumerate(zip(STRIDES, sizes)):
        g, a = match[:, level].nonzero(as_tuple=True)
        c = xy[g] / stride
        cell = c.floor().long()
        step = torch.where(c - cell < 0.5, -1, 1)  # (P, 2): towards the nearer neighbour
        cells = [cell, cell + torch.stack([step[:, 0], torch.zeros_like(step[:, 0])], 1),
                 cell + torch.stack([torch.zeros_like(step[:, 1]), step[:, 1]], 1)]  # fmt: skip
        cells = torch.cat(cells)
        g3, a3 = g.repeat(3), a.repeat(3)
        ok = (cells[:, 0] >= 0) & (cells[:, 0] < w) & (cells[:, 1] >= 0) & (cells[:, 1] < h)
        g3, a3, cells = g3[ok], a3[ok], cells[ok]
        out.append(((gt[g3, 0].long(), a3, cells[:, 1], cells[:, 0]), gt[g3, 1:]))
    return out


def seed_loss(model, raw, targets, box_weight: float = 2.0):
    """Focal objectness (per positive) + ``box_weight`` x mean (1 - GIoU).

    Args:
        raw: the model's outputs.
        targets: :func:`assign`'s positives, on the model's device (assigned before the forward
            pass, on the CPU, so that nothing here waits for the device).

    Returns:
        The loss and its two parts (detached tensors: reading them waits for the device).
    """
    import torch
    from torchvision.ops import sigmoid_focal_loss

    obj, box_terms, positives = 0.0, [], 0
    for level, (r, (index, true)) in enumerate(zip(raw, targets)):
        logits = r[:, :, 4].float()  # (B, A, H, W)
        target = torch.zeros_like(logits)
        if len(true):
            pred, _ = decode(r, model.anchors[level], STRIDES[level], index)
            box_terms.append(1.0 - giou(pred, true))
            target[index] = 1.0
        obj = obj + sigmoid_focal_loss(logits, target, reduction="sum")
        positives += len(true)
    obj = obj / max(positives, 1)
    box = torch.cat(box_terms).mean() if box_terms else logits.sum() * 0.0
    return obj + box_weight * box, {"obj": obj.detach(), "box": box.detach()}


def label_boxes(labels: np.ndarray) -> np.ndarray:
    """(N, 4) float32 boxes x0, y0, x1, y1 (end exclusive) of the objects of a label image."""
    from scipy import ndimage as ndi

    found = [sl for sl in ndi.find_objects(labels) if sl is not None]
    return np.array(
        [(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in found], np.float32
    ).reshape(-1, 4)


def sample(item, size: int, rng: np.random.Generator):
    """One random ``size`` square of a (normalised field, labels) pair, augmented and padded."""
    image, labels = item
    h, w = image.shape
    y = int(rng.integers(0, h - size + 1)) if h > size else 0
    x = int(rng.integers(0, w - size + 1)) if w > size else 0
    image, labels = augment(
        image[y : y + size, x : x + size], labels[y : y + size, x : x + size], rng
    )
    boxes = label_boxes(labels)
    boxes = boxes[((boxes[:, 2:] - boxes[:, :2]) >= 2).all(axis=1)]  # slivers cut by the crop
    out = np.zeros((size, size), np.float32)
    out[: image.shape[0], : image.shape[1]] = image
    return out, boxes


def train_seed_model(train_items, options: SeedTrainOptions, progress: bool = True):
    """Train the detector on (image (H, W), labels (H, W)) pairs; returns (model, history)."""
    import torch
    from tqdm.auto import tqdm

    from .finders import normalise
    from .learned import resolve_device
    from .seed import build_model, kmeans_anchors

    if not train_items:
        raise ValueError("no training fields (all went to validation, or none has truth labels)")
    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    device = resolve_device(options.device)
    items = [(normalise(image), np.asarray(labels)) for image, labels in train_items]
    wh = np.concatenate([label_boxes(labels) for _, labels in items])
    wh = wh[:, 2:] - wh[:, :2]
    anchors = kmeans_anchors(wh, 2 * options.anchors_per_level, seed=options.seed)
    model = build_model(**options.model_args(anchors)).to(device)
    optimiser, schedule, total = optimiser_and_schedule(model, len(items), options)
    cuda = device.startswith("cuda")
    tuned = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = cuda  # one crop size: tuned once (restored after)
    history, step = [], 0
    anchors_cpu = model.anchors.cpu()
    sizes = [(options.crop_size // s,) * 2 for s in STRIDES]
    bar = tqdm(total=total, unit="step", desc="crop train (seed)", disable=not progress)
    model.train()
    while step < total:
        order = rng.permutation(len(items))
        for start in range(0, len(order), options.batch_size):
            if step >= total:
                break
            batch = [
                sample(items[i], options.crop_size, rng)
                for i in order[start : start + options.batch_size]
            ]
            x = torch.from_numpy(np.stack([b[0] for b in batch])[:, None]).to(
                device, non_blocking=True
            )
            targets = [
                (tuple(t.to(device, non_blocking=True) for t in index), true.to(device))
                for index, true in assign([torch.from_numpy(b[1]) for b in batch], anchors_cpu, sizes)
            ]  # fmt: skip
            with torch.autocast("cuda", torch.bfloat16, enabled=cuda):
                raw = model(x)  # [(B, A, 5, S/8, S/8), (B, A, 5, S/16, S/16)]
            loss, parts = seed_loss(model, raw, targets, options.box_weight)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimiser.step()
            schedule.step()
            step += 1
            history.append({"step": step, "loss": loss.detach(), **parts})
            bar.update(1)
            if step % 25 == 0:  # reading the loss waits for the device: not every step
                bar.set_postfix(loss=f"{float(history[-1]['loss']):.3f}", refresh=False)
    bar.close()
    torch.backends.cudnn.benchmark = tuned
    history = [{k: v if k == "step" else float(v) for k, v in h.items()} for h in history]
    model.eval()
    return model, history


def choose_threshold(finder, items, grid=THRESHOLDS, limit: int = 64) -> tuple[float, dict]:
    """Score threshold of best F1 at IoU 0.5 on (image, labels) pairs; sets it on ``finder``.

    The network runs once (at the lowest threshold); each threshold re-runs the merge and masks,
    on at most ``limit`` fields (a fixed random subset). Returns the threshold and the scores of
    each grid value.
    """
    from .metrics import score_fields

    items = fixed_subset(items, limit)
    fields = [finder._normalise(image) for image, _ in items]
    found = finder.candidates(fields, min(grid))
    table = {}
    for t in grid:
        preds = [finder.labels(f, b, s, t) for f, (b, s) in zip(fields, found)]
        table[t] = score_fields([labels for _, labels in items], preds)
    best = max(grid, key=lambda t: (table[t]["f1"], table[t]["map"]))
    finder.score_threshold = float(best)
    return float(best), {str(t): {k: table[t][k] for k in ("f1", "map")} for t in grid}


def train_seed_finder(
    source: str | Path,
    out: str | Path,
    options: SeedTrainOptions | None = None,
    *,
    truth: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Train the seed finder on the fields of ``source`` and save a checkpoint at ``out``.

    Returns:
        A summary like :func:`~cytotune.engine.crop.train.train_finder`'s.
    """
    from .seed import SeedFinder, save_checkpoint

    options = options or SeedTrainOptions()
    start = time.perf_counter()
    records, items, key, train_rows, val_rows = labelled_split(source, truth, options)
    model, history = train_seed_model([items[i] for i in train_rows], options, progress)
    config = {
        "finder": "seed",
        "model": {**options.model_args(model.anchors.view(-1, 2).cpu().numpy())},
        "iou_threshold": options.iou_threshold,
        "centre_fraction": options.centre_fraction,
        **training_record(options, records, key, train_rows, val_rows, history),
    }
    finder = SeedFinder(model=model, config=config, device=options.device)
    val = [items[i] for i in val_rows]
    if options.score_threshold is None:
        chosen, table = choose_threshold(finder, val or [items[i] for i in train_rows])
        config.update(score_threshold=chosen, threshold_grid=table)
    else:
        config["score_threshold"] = finder.score_threshold = float(options.score_threshold)
    config["val"] = evaluate(finder, val)
    save_checkpoint(model, out, config)
    summary = training_summary(config, train_rows, val_rows, history, start, options.device)
    return {**summary, "score_threshold": config["score_threshold"]}
