"""Loader throughput: cytotune's Ray Data pipeline (Parquet, decoded pixels) vs a torch DataLoader
reading the same crops from PNG files, with the same number of worker processes.

The Ray Data path is measured twice: streaming (Parquet read + decode every epoch, cache="never")
and cached (decoded split kept in the object store after the first epoch, the default for splits
that fit). Both paths deliver normalised float32 (B, C, H, W) tensors on the target device; pixels are the
same 3-channel uint8 crops. Reports crops/s per path and the ratio; writes a JSON line per size.

    python bench/loader.py --sizes 64 128 --n 8192 --workers 2 --out bench/results/loader.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def make_crops(n: int, size: int, seed: int = 0) -> np.ndarray:
    """(N, 3, size, size) uint8 cell-like crops (synthetic cells when available, else blobs)."""
    try:
        from cytotune.engine.synth import render

        batch = render("metastasis", n, size=size, seed=seed)
        images = batch.images.astype(np.float32)
        hi = np.percentile(images, 99.5, axis=(0, 2, 3), keepdims=True)
        return np.clip(images / hi * 255, 0, 255).astype(np.uint8)
    except ImportError:
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[:size, :size] / size - 0.5
        blob = np.exp(-(xx**2 + yy**2) * 20)
        noise = rng.random((n, 3, size, size))
        return (255 * blob * noise).astype(np.uint8)


def write_sources(crops: np.ndarray, root: Path) -> tuple[Path, list[Path]]:
    from cytotune.engine.data import DatasetSpec, DatasetWriter

    spec = DatasetSpec(
        channel_names=("dna", "actin", "vimentin"), dtype="uint8", shape=crops.shape[1:]
    )
    png_paths = []
    with DatasetWriter(root / "dataset", spec, rows_per_shard=2048) as writer:
        for i, crop in enumerate(crops):
            writer.add(f"c{i:06d}", crop, label="ab"[i % 2])
            path = root / "png" / f"c{i:06d}.png"
            path.parent.mkdir(exist_ok=True)
            Image.fromarray(np.moveaxis(crop, 0, -1)).save(path)
            png_paths.append(path)
    return root / "dataset", png_paths


class PngDataset(torch.utils.data.Dataset):
    """The usual baseline: decode each PNG per access."""

    def __init__(self, paths, labels):
        self.paths, self.labels = paths, labels

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        image = np.asarray(Image.open(self.paths[i]))  # (H, W, 3) uint8
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), self.labels[i]


def time_epochs(iterate, epochs: int) -> float:
    """Crops/s over ``epochs`` epochs after one warm-up epoch."""
    for _ in iterate(0):
        pass
    start, count = time.perf_counter(), 0
    for epoch in range(1, epochs + 1):
        for images in iterate(epoch):
            count += images.shape[0]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


def bench_size(size: int, n: int, workers: int, batch: int, epochs: int, device: str) -> dict:
    from cytotune.engine.data.loader import LoaderConfig, create_loader

    crops = make_crops(n, size)
    with tempfile.TemporaryDirectory() as tmp:
        dataset, pngs = write_sources(crops, Path(tmp))
        mean = torch.tensor(crops.mean(axis=(0, 2, 3)), device=device).view(1, 3, 1, 1)
        std = torch.tensor(crops.std(axis=(0, 2, 3)), device=device).view(1, 3, 1, 1)
        png_loader = torch.utils.data.DataLoader(
            PngDataset(pngs, [i % 2 for i in range(n)]),
            batch_size=batch,
            shuffle=True,
            num_workers=workers,
            pin_memory=device == "cuda",
            persistent_workers=workers > 0,
        )

        def png_epoch(_epoch):
            for images, _ in png_loader:
                yield (images.to(device, non_blocking=True).float() - mean) / std

        config = LoaderConfig(batch_size=batch, pin_memory=device == "cuda", prefetch_batches=4)
        ray_loader = create_loader("ray", dataset, config=config, device=device, cache="always")
        stream_loader = create_loader("ray", dataset, config=config, device=device, cache="never")
        local_loader = create_loader("inprocess", dataset, config=config, device=device)

        def ours(loader):
            return lambda epoch: (b.images for b in loader.epoch(epoch))

        result = {
            "size": size,
            "n": n,
            "workers": workers,
            "batch": batch,
            "device": device,
            "png_dataloader": time_epochs(png_epoch, epochs),
            "ray_data_streaming": time_epochs(ours(stream_loader), epochs),
            "ray_data_cached": time_epochs(ours(ray_loader), epochs),
            "inprocess_parquet": time_epochs(ours(local_loader), epochs),
        }
    result["ratio_streaming_vs_png"] = result["ray_data_streaming"] / result["png_dataloader"]
    result["ratio_cached_vs_png"] = result["ray_data_cached"] / result["png_dataloader"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import ray

    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    device = "cuda" if torch.cuda.is_available() else "cpu"
    machine = (
        torch.cuda.get_device_name()
        if device == "cuda"
        else platform.processor() or platform.machine()
    )
    for size in args.sizes:
        result = bench_size(size, args.n, args.workers, args.batch, args.epochs, device)
        result.update(machine=machine, cpus=os.cpu_count())
        line = json.dumps(
            {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}
        )
        print(line, flush=True)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with args.out.open("a") as handle:
                handle.write(line + "\n")


if __name__ == "__main__":
    main()
