"""``cytotune crop train``: fit the learned finder on fields with instance label images.

Fields are split into train and validation by group (well, else plate, else field), so cells of
one well never sit on both sides. The loop is plain PyTorch: AdamW, linear warm-up then cosine
decay, random flips and 90-degree turns per field, bf16 autocast on CUDA, gradient clipping.
After training the score and mask thresholds of the best Bowl score are chosen on the validation
fields (unless given), and the validation fields are scored (F1 at IoU 0.5, the Bowl's mAP) and
written into the checkpoint's ``config.json``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .fields import list_fields, read_field, read_truth, resolve_channel

THRESHOLD_FIELDS = 128  # validation fields the threshold grid scores (35 points each)


@dataclass(frozen=True)
class TrainOptions:
    """Settings of ``cytotune crop train`` (see its ``--help``)."""

    epochs: int = 36  # the dsb2018 benchmark's (BENCHMARKS.md, session 16)
    max_steps: int | None = None
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    backbone: str = "resnet18"
    width: int = 256
    min_size: int = 512
    max_size: int = 1024
    val_fraction: float = 0.2
    group: str = "auto"
    channel: str | int | None = None
    channel_names: tuple[str, ...] | None = None
    device: str = "auto"
    seed: int = 0
    score_threshold: float | None = None  # None: chosen on the validation fields
    mask_threshold: float | None = None  # None: chosen with the score threshold

    def __post_init__(self) -> None:
        for name, lo in (("epochs", 1), ("batch_size", 1), ("min_size", 32), ("max_size", 32)):
            if int(getattr(self, name)) < lo:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be >= {lo}, got {getattr(self, name)}"
                )
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"--max-steps must be >= 1, got {self.max_steps}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"--val-fraction must be within [0, 1), got {self.val_fraction}")
        if not self.lr > 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")
        for name in ("score_threshold", "mask_threshold"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"--{name.replace('_', '-')} must be within [0, 1], got {value}")


def targets_from_labels(labels: np.ndarray) -> dict:
    """Mask R-CNN targets (boxes x0, y0, x1, y1; labels; masks) from an instance label image."""
    import torch
    from scipy import ndimage as ndi

    ids = np.unique(labels)
    ids = ids[ids > 0]
    masks = (labels[None] == ids[:, None, None]).astype(np.uint8)  # (N, H, W)
    boxes = np.zeros((len(ids), 4), dtype=np.float32)
    for k, sl in enumerate(ndi.find_objects(labels)):
        if sl is None:
            continue
        row = np.searchsorted(ids, k + 1)
        boxes[row] = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
    return {
        "boxes": torch.from_numpy(boxes),
        "labels": torch.ones(len(ids), dtype=torch.int64),
        "masks": torch.from_numpy(masks),
    }


def augment(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
    """Same random flips and 90-degree turn for a field channel and its label image."""
    if rng.random() < 0.5:
        image, labels = image[:, ::-1], labels[:, ::-1]
    if rng.random() < 0.5:
        image, labels = image[::-1], labels[::-1]
    if rng.random() < 0.5:
        image, labels = np.rot90(image), np.rot90(labels)
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)


def fixed_subset(items: list, limit: int | None) -> list:
    """At most ``limit`` of ``items``: a fixed random subset in their order (the threshold
    grids score every field once per grid point)."""
    if limit is None or len(items) <= limit:
        return items
    keep = np.sort(np.random.default_rng(0).permutation(len(items))[:limit])
    return [items[i] for i in keep]


def split_by_group(
    groups: list[str], val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Row indices of train and validation; whole groups go to one side."""
    names = sorted(set(groups))
    rng = np.random.default_rng(seed)
    rng.shuffle(names)
    n_val = max(1, int(round(val_fraction * len(names)))) if val_fraction > 0 else 0
    if n_val >= len(names):
        n_val = len(names) - 1
    val = set(names[:n_val])
    train_rows = [i for i, g in enumerate(groups) if g not in val]
    val_rows = [i for i, g in enumerate(groups) if g in val]
    return train_rows, val_rows


def model_args(options: TrainOptions) -> dict:
    """The :func:`~cytotune.engine.crop.learned.build_model` arguments a checkpoint records."""
    return {
        "backbone": options.backbone,
        "min_size": options.min_size,
        "max_size": options.max_size,
        "width": options.width,
    }


def optimiser_and_schedule(model, n_items: int, options):
    """AdamW and its schedule (linear warm-up, then cosine to 0) for a finder's training on
    ``n_items`` fields: (optimiser, scheduler stepped once per step, total steps)."""
    import torch

    total = math.ceil(n_items / options.batch_size) * options.epochs
    if options.max_steps is not None:
        total = min(total, options.max_steps)
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=options.lr, weight_decay=options.weight_decay
    )
    warm = max(1, min(options.warmup_steps, total // 5))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    return optimiser, torch.optim.lr_scheduler.LambdaLR(optimiser, factor), total


def train_model(train_items, val_items, options: TrainOptions, progress: bool = True, log=print):
    """Train a Mask R-CNN on (image (H, W), labels (H, W)) pairs; returns (model, history)."""
    import torch
    from tqdm.auto import tqdm

    from .learned import build_model, resolve_device

    if not train_items:
        raise ValueError("no training fields (all went to validation, or none has truth labels)")
    from .learned import to_tensor

    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    device = resolve_device(options.device)
    model = build_model(**model_args(options)).to(device)
    optimiser, schedule, total = optimiser_and_schedule(model, len(train_items), options)
    cuda = device.startswith("cuda")
    history, step = [], 0
    bar = tqdm(total=total, unit="step", desc="crop train", disable=not progress)
    model.train()
    while step < total:
        order = rng.permutation(len(train_items))
        for start in range(0, len(order), options.batch_size):
            if step >= total:
                break
            images, targets = [], []
            for i in order[start : start + options.batch_size]:
                image, labels = augment(*train_items[i], rng)
                images.append(to_tensor(image).to(device))
                targets.append({k: v.to(device) for k, v in targets_from_labels(labels).items()})
            with torch.autocast("cuda", torch.bfloat16, enabled=cuda):
                losses = model(images, targets)
            loss = sum(losses.values())
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimiser.step()
            schedule.step()
            step += 1
            history.append({"step": step, "loss": float(loss.detach())})
            bar.update(1)
            bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", refresh=False)
    bar.close()
    model.eval()
    return model, history


def evaluate(finder, items) -> dict:
    """Detection scores of a finder on (image, labels) pairs."""
    from .metrics import score_fields

    if not items:
        return {}
    preds = finder.find_many([image for image, _ in items])
    return score_fields([labels for _, labels in items], preds)


def load_labelled_fields(source, truth, options) -> tuple[list, list, str]:
    """(records, (image channel, labels) items, group key) of the labelled fields of ``source``
    (the finders' training data; ``options`` gives group, channel and channel names)."""
    records = list_fields(source, truth=truth)
    missing = [r.field_id for r in records if r.truth_path is None]
    if missing:
        raise ValueError(
            f"{len(missing)} field(s) have no instance label image (e.g. {missing[:3]}); pass "
            "--truth DIR with label images named like the fields, or a truth column in the index"
        )
    key = options.group
    if key == "auto":
        key = next((g for g in ("well", "plate") if all(r.groups.get(g) for r in records)), "field")
    if any(key not in r.groups for r in records):
        raise ValueError(
            f"--group {key!r} is not a column of every field (have {sorted(records[0].groups)})"
        )
    items = []
    for r in records:
        image = read_field(r.path)
        names = options.channel_names or tuple(f"ch{i}" for i in range(image.shape[0]))
        if len(names) != image.shape[0]:
            raise ValueError(
                f"{len(names)} channel names for {r.path} with {image.shape[0]} channel(s)"
            )
        items.append(
            (image[resolve_channel(options.channel, tuple(names))], read_truth(r.truth_path))
        )
    return records, items, key


def labelled_split(source, truth, options) -> tuple[list, list, str, list[int], list[int]]:
    """The labelled fields of ``source`` split into train and validation by group:
    (records, items, group key, train rows, validation rows)."""
    records, items, key = load_labelled_fields(source, truth, options)
    train_rows, val_rows = split_by_group(
        [r.groups[key] for r in records], options.val_fraction, options.seed
    )
    return records, items, key, train_rows, val_rows


def training_record(options, records, key, train_rows, val_rows, history) -> dict:
    """What every finder checkpoint's ``config.json`` says about its training run."""
    return {
        "train": asdict(options),
        "split_group": key,
        "train_fields": [records[i].field_id for i in train_rows],
        "val_fields": [records[i].field_id for i in val_rows],
        "final_loss": history[-1]["loss"] if history else None,
    }


def training_summary(config, train_rows, val_rows, history, start, device, **extra) -> dict:
    """What ``cytotune crop train`` prints: field counts, validation scores, steps, seconds."""
    from .learned import resolve_device

    return {
        "train_fields": len(train_rows),
        "val_fields": len(val_rows),
        "val": config["val"],
        **extra,
        "steps": len(history),
        "seconds": time.perf_counter() - start,
        "device": resolve_device(device),
    }


def train_finder(
    source: str | Path,
    out: str | Path,
    options: TrainOptions | None = None,
    *,
    truth: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Train the learned finder on the fields of ``source`` and save a checkpoint at ``out``.

    Args:
        source: folder or index of fields (see :func:`~cytotune.engine.crop.fields.list_fields`).
        out: checkpoint directory to write.
        options: training settings.
        truth: folder of instance label images named like the fields (or a ``truth`` column).

    Returns:
        A summary: field counts, validation scores, seconds, device.
    """
    from .learned import MASK_GRID, SCORE_GRID, LearnedFinder, choose_thresholds, save_checkpoint

    options = options or TrainOptions()
    start = time.perf_counter()
    records, items, key, train_rows, val_rows = labelled_split(source, truth, options)
    model, history = train_model(
        [items[i] for i in train_rows], [items[i] for i in val_rows], options, progress
    )
    config = {
        "model": model_args(options),
        **training_record(options, records, key, train_rows, val_rows, history),
    }
    finder = LearnedFinder(
        model=model,
        config=config,
        device=options.device,
        score_threshold=options.score_threshold,
        mask_threshold=options.mask_threshold,
    )
    val = [items[i] for i in val_rows]
    if val and (options.score_threshold is None or options.mask_threshold is None):
        grids = {
            "score_grid": SCORE_GRID
            if options.score_threshold is None
            else (finder.score_threshold,),
            "mask_grid": MASK_GRID if options.mask_threshold is None else (finder.mask_threshold,),
        }
        _, table = choose_thresholds(finder, val, **grids, limit=THRESHOLD_FIELDS)
        config["threshold_choice"] = "best F1 + mAP on the validation fields (val is scored there)"
        config["threshold_grid"] = [
            {k: row[k] for k in ("score_threshold", "mask_threshold", "f1", "map")} for row in table
        ]
    config.setdefault("threshold_choice", "given" if val else "default: no validation fields")
    config.update(score_threshold=finder.score_threshold, mask_threshold=finder.mask_threshold)
    config["val"] = evaluate(finder, val)
    save_checkpoint(model, out, config)
    summary = training_summary(config, train_rows, val_rows, history, start, options.device)
    return {
        **summary,
        "score_threshold": finder.score_threshold,
        "mask_threshold": finder.mask_threshold,
    }
