"""The plain loop the search must beat (DESIGN.md, "The reference loop the search must beat").

Fixed and written out here, independent of cytotune's trainer: torch, timm, numpy and pyarrow
only (plus scikit-learn's ``f1_score`` as the metric). It reads a cytotune dataset from disk
(``manifest.json``, the Parquet shards, ``folds/<name>.json`` + ``.parquet``) and, on one device,
trains the K fold models one after another with the whole dataset held there as one tensor:

- timm ``resnet18`` from random init, ``in_chans`` = dataset channels, one output per class;
- AdamW (lr 2e-3, weight decay 0.05), ``OneCycleLR`` over all steps, batch 256, 40 epochs,
  cross-entropy; bf16 autocast on CUDA; channels_last;
- per batch a random horizontal flip, vertical flip and 90-degree turn (each with p = 1/2,
  applied to the whole batch); inputs z-scored with the training split's per-channel mean/std;
- validation prediction = mean of the logits over the 4 rotations; weighted F1 per fold.

    python bench/plain_loop.py data/mitocheck --folds k5-group [--epochs 40] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import timm
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Recipe:
    """The fixed training recipe (change only for smoke tests)."""

    arch: str = "resnet18"
    lr: float = 2e-3
    weight_decay: float = 0.05
    batch_size: int = 256
    epochs: int = 40
    bf16: bool = True  # used on CUDA only
    channels_last: bool = True
    eval_batch_size: int = 1024
    seed: int = 0


@dataclass
class Crops:
    """A whole dataset in memory: raw pixels as float32 and integer labels."""

    images: np.ndarray  # (N, C, H, W) float32
    labels: np.ndarray  # (N,) int64
    cell_ids: np.ndarray  # (N,) str
    classes: list[str]
    channels: list[str]


def load_crops(dataset: Path) -> Crops:
    """Read every crop of a cytotune dataset straight from its manifest and Parquet shards."""
    manifest_path = dataset / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} not found: {dataset} is not a cytotune dataset")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("task") != "classification" or not manifest.get("label_map"):
        raise ValueError(f"{dataset} is not a labelled classification dataset")
    shards = manifest.get("shards") or sorted(
        str(p.relative_to(dataset)) for p in (dataset / "data").glob("part-*.parquet")
    )
    if not shards:
        raise FileNotFoundError(f"no Parquet shards in {dataset}/data")
    label_map: dict[str, int] = manifest["label_map"]
    shape = tuple(manifest["shape"])
    ids, images, labels = [], [], []
    for shard in shards:
        table = pq.read_table(dataset / shard, columns=["cell_id", "image", "label"])
        raw = b"".join(table.column("image").to_pylist())
        images.append(np.frombuffer(raw, dtype=manifest["dtype"]).reshape(-1, *shape))
        ids += table.column("cell_id").to_pylist()
        labels += [label_map[str(v)] for v in table.column("label").to_pylist()]
    return Crops(
        images=np.concatenate(images).astype(np.float32),
        labels=np.asarray(labels, dtype=np.int64),
        cell_ids=np.asarray(ids, dtype=object),
        classes=sorted(label_map, key=label_map.__getitem__),
        channels=list(manifest["channel_names"]),
    )


def load_fold_index(dataset: Path, name: str, cell_ids: np.ndarray) -> tuple[np.ndarray, dict]:
    """The validation fold of every crop (aligned with ``cell_ids``) and the fold set's settings."""
    settings_path = dataset / "folds" / f"{name}.json"
    if not settings_path.is_file():
        raise FileNotFoundError(
            f"no fold set {name!r} in {dataset} ({settings_path} missing); create it with "
            f"`cytotune folds {dataset} --name {name}`"
        )
    settings = json.loads(settings_path.read_text())
    table = pq.read_table(dataset / "folds" / f"{name}.parquet").to_pydict()
    lookup = dict(zip(table["cell_id"], table["fold"]))
    missing = [c for c in cell_ids if c not in lookup]
    if missing:
        raise ValueError(
            f"fold set {name!r} has no fold for {len(missing)} crops (e.g. {missing[0]!r}): it was "
            "made for another version of the dataset; re-create it with --overwrite"
        )
    return np.asarray([lookup[c] for c in cell_ids], dtype=np.int64), settings


def dihedral(x: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """One random flip/flip/turn for the whole batch (decided on the host: no device sync)."""
    if rng.random() < 0.5:
        x = x.flip(3)
    if rng.random() < 0.5:
        x = x.flip(2)
    if x.shape[2] == x.shape[3] and rng.random() < 0.5:
        x = torch.rot90(x, 1, dims=(2, 3))
    return x


@torch.no_grad()
def tta_logits(model: torch.nn.Module, x: torch.Tensor, recipe: Recipe, amp: bool) -> torch.Tensor:
    """Mean of the logits over the 4 rotations, in evaluation batches."""
    model.eval()
    turns = 4 if x.shape[2] == x.shape[3] else 1
    out = []
    for i in range(0, len(x), recipe.eval_batch_size):
        batch = x[i : i + recipe.eval_batch_size]
        total = 0.0
        for k in range(turns):
            view = torch.rot90(batch, k, dims=(2, 3))
            if recipe.channels_last:
                view = view.contiguous(memory_format=torch.channels_last)
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
                total = total + model(view).float()
        out.append(total / turns)
    return torch.cat(out)  # (N, classes)


def train_fold(
    images: torch.Tensor,
    labels: torch.Tensor,
    train_idx: torch.Tensor,
    val_idx: torch.Tensor,
    num_classes: int,
    recipe: Recipe,
    seed: int,
) -> np.ndarray:
    """Train one fold model from scratch; return its predicted class per validation crop."""
    device = images.device
    amp = recipe.bf16 and device.type == "cuda"
    torch.manual_seed(seed)
    rng = random.Random(seed)
    std, mean = torch.std_mean(images[train_idx].double(), dim=(0, 2, 3), correction=0)
    mean = mean.float().view(1, -1, 1, 1)
    std = std.float().clamp_min(1e-6).view(1, -1, 1, 1)
    x_train = (images[train_idx] - mean) / std  # (N_train, C, H, W)
    x_val = (images[val_idx] - mean) / std
    y_train = labels[train_idx]
    memory = torch.channels_last if recipe.channels_last else torch.contiguous_format
    model = timm.create_model(
        recipe.arch, pretrained=False, in_chans=images.shape[1], num_classes=num_classes
    ).to(device, memory_format=memory)
    n = len(x_train)
    batch = min(recipe.batch_size, n)
    steps = n // batch  # the last partial batch of each epoch is dropped
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=recipe.lr, total_steps=recipe.epochs * steps
    )
    for _ in range(recipe.epochs):
        model.train()
        order = torch.randperm(n, device=device)
        for step in range(steps):
            pick = order[step * batch : (step + 1) * batch]
            x = dihedral(x_train[pick], rng).contiguous(memory_format=memory)  # (B, C, H, W)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(model(x), y_train[pick])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return tta_logits(model, x_val, recipe, amp).argmax(1).cpu().numpy()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_plain(dataset: Path, folds: str, recipe: Recipe, device: str | None = None) -> dict:
    """Train and score the plain loop on every fold of ``folds``, one after another.

    Returns:
        ``folds`` (per fold: fold, f1_weighted, accuracy, n_train, n_val, seconds), ``wall_s``
        (the K folds, device-synchronised, data already on the device), ``load_s`` (reading
        Parquet and moving the tensor), ``device``, ``images_per_s`` and the recipe.
    """
    from sklearn.metrics import f1_score

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    start = time.perf_counter()
    crops = load_crops(Path(dataset))
    fold_of, settings = load_fold_index(Path(dataset), folds, crops.cell_ids)
    images = torch.from_numpy(crops.images).to(dev)  # (N, C, H, W), the whole dataset
    labels = torch.from_numpy(crops.labels).to(dev)
    _sync(dev)
    load_s = time.perf_counter() - start
    per_fold, seen = [], 0
    start = time.perf_counter()
    for fold in range(int(settings.get("k", fold_of.max() + 1))):
        fold_start = time.perf_counter()
        is_val = fold_of == fold
        if not is_val.any() or is_val.all():
            raise ValueError(f"fold {fold} of {folds!r} has no validation or no training crops")
        train_idx = torch.from_numpy(np.flatnonzero(~is_val)).to(dev)
        val_idx = torch.from_numpy(np.flatnonzero(is_val)).to(dev)
        seed = recipe.seed * 1000 + fold
        predicted = train_fold(images, labels, train_idx, val_idx, len(crops.classes), recipe, seed)
        truth = crops.labels[is_val]
        _sync(dev)
        n_train = int((~is_val).sum())
        batch = min(recipe.batch_size, n_train)
        seen += recipe.epochs * (n_train // batch) * batch
        row = {
            "fold": fold,
            "f1_weighted": float(f1_score(truth, predicted, average="weighted", zero_division=0)),
            "accuracy": float(np.mean(truth == predicted)),
            "n_train": n_train,
            "n_val": int(is_val.sum()),
            "seconds": time.perf_counter() - fold_start,
        }
        per_fold.append(row)
        print(
            f"plain fold {fold}: f1_weighted {row['f1_weighted']:.4f} "
            f"({row['n_train']} train / {row['n_val']} val, {row['seconds']:.1f} s)",
            flush=True,
        )
    _sync(dev)
    wall = time.perf_counter() - start
    return {
        "folds": per_fold,
        "wall_s": wall,
        "load_s": load_s,
        "images_per_s": seen / wall,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "fold_set": {"name": folds, "k": settings.get("k"), "hash": settings.get("hash")},
        "shape": list(crops.images.shape[1:]),
        "classes": len(crops.classes),
        "recipe": asdict(recipe) | {"bf16": recipe.bf16 and dev.type == "cuda"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--folds", default="k5-group", help="fold-set name (default k5-group)")
    parser.add_argument("--epochs", type=int, default=Recipe.epochs)
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = parser.parse_args()
    result = run_plain(
        args.dataset, args.folds, Recipe(epochs=args.epochs, seed=args.seed), args.device
    )
    scores = [f["f1_weighted"] for f in result["folds"]]
    std = float(np.std(scores, ddof=1)) if len(scores) > 1 else math.nan
    print(f"plain: f1_weighted {np.mean(scores):.4f} ± {std:.4f} in {result['wall_s']:.1f} s")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
