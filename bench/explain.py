"""Explain throughput, measured in one run on one machine.

Kernel (ResNet-50, 224 px, batch 256, bf16 autocast, channels_last, tensors already on the GPU):
our batched Grad-CAM, Grad-CAM++ and LayerCAM vs captum's LayerGradCam one image at a time
(fp32, the notebook way) and vs the same model's batched bf16 forward+backward.
End to end: the explain job's maps stage (Parquet in, maps written as Parquet) in this process
(executor local) and on Ray actors, vs the bare batched Grad-CAM rate of the same run.

    python bench/explain.py --out bench/results/explain.json
    python bench/explain.py --size 64 --cells 512 --backbone resnet18 --smoke   # CPU check
    # about 1M maps (62,500 cells x 16 trials), one GPU:
    python bench/explain.py --backbone resnet18 --size 64 --cells 62500 --trials 16 --batch 1024 \
        --e2e-batch 1024 --actors-per-gpu 4 --no-worker-loop --out bench/results/explain/million.json
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import machine, random_dataset, write_result


def timed(fn, n: int, sync: bool) -> float:
    """Seconds per call of ``fn`` over ``n`` calls (after one warm-up call)."""
    fn()
    if sync:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    if sync:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / n


def build_model(backbone: str, device: str):
    from cytotune.search_spaces import ModelConfig
    from cytotune.search_spaces.models import create_model

    config = ModelConfig.from_sample(
        {"family": "backbone", "backbone": {"backbone": backbone}},
        in_chans=3,
        task="binary",
        num_outputs=2,
    )
    model = create_model(config).to(device).eval()
    if device == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return config, model


def kernel(args, device: str) -> dict:
    from captum.attr import LayerGradCam
    from cytotune.explainers import create_explainer

    cuda = device == "cuda"
    _, model = build_model(args.backbone, device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    if cuda:
        x = x.to(memory_format=torch.channels_last)
    target = torch.zeros(args.batch, dtype=torch.long, device=device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=cuda)
    out = {}

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        with autocast:
            score = model(x.requires_grad_(False))[:, 0].sum()
        score.backward()

    out["fwd_bwd_img_s"] = args.batch / timed(fwd_bwd, args.steps, cuda)
    for method in ("gradcam", "gradcam++", "layercam"):
        explainer = create_explainer(method, model, model.target_layer)

        def run(explainer=explainer):
            with autocast:
                explainer.attribute(x, target=target)

        out[f"{method}_img_s"] = args.batch / timed(run, args.steps, cuda)
    captum = LayerGradCam(model, model.target_layer)
    singles = x[: args.single].float().contiguous()

    def per_image():
        for i in range(len(singles)):
            captum.attribute(singles[i : i + 1], target=0)

    out["captum_per_image_img_s"] = len(singles) / timed(per_image, 1, cuda)

    def captum_batched():
        with autocast:
            captum.attribute(x, target=target)

    out["captum_batched_bf16_img_s"] = args.batch / timed(captum_batched, args.steps, cuda)
    out["gradcam_vs_captum_per_image"] = out["gradcam_img_s"] / out["captum_per_image_img_s"]
    for method in ("gradcam", "gradcam++", "layercam"):
        out[f"{method}_vs_fwd_bwd"] = out[f"{method}_img_s"] / out["fwd_bwd_img_s"]
    return out


def make_study(root: Path, dataset: Path, backbone: str, trials: int) -> Path:
    """A study whose trials are fold checkpoints of randomly initialised models (no training)."""
    import yaml
    from cytotune.engine.data import Manifest
    from cytotune.engine.data.folds import make_folds, save_folds
    from cytotune.engine.search.store import StudyStore
    from cytotune.engine.train import TrainConfig
    from cytotune.engine.train.checkpoint import checkpoint_config, write

    manifest = Manifest.load(dataset)
    folds = make_folds(dataset, k=2, group="well", stratify="label", name="k2-well")
    save_folds(dataset, folds)
    study = {
        "name": "bench-explain",
        "dataset": str(dataset),
        "folds": {"name": "k2-well", "k": 2, "group": "well"},
        "space": ["demo"],
        "objective": {"metric": "accuracy", "mode": "max"},
    }
    store = StudyStore(str(root / "study"))
    store.create(
        yaml.safe_dump(study),
        {
            "name": "bench",
            "dataset": str(dataset),
            "dataset_hash": manifest.content_hash,
            "folds": folds.name,
            "fold_hash": folds.hash,
        },
    )
    train = TrainConfig.from_sample({})
    for t in range(trials):
        torch.manual_seed(t)
        config, model = build_model(backbone, "cpu")
        checkpoint = root / "study" / "tune" / f"trial_t{t}" / "checkpoint_000000"
        for fold in range(2):
            write(
                checkpoint / f"fold_{fold}",
                model.state_dict(),
                {},
                checkpoint_config(config, train, manifest, fold, 0),
            )
        store.upsert(
            "trials",
            (f"t{t}",),
            {
                "trial_id": f"t{t}",
                "status": "completed",
                "family": "backbone",
                "checkpoint": str(checkpoint),
                "val/accuracy": 0.5 + t / 100,
            },
        )
    store.flush()
    store.update_status(status="finished")
    return root / "study"


def worker_timings(study: Path, state, prefix: str) -> dict:
    """When the run's actors were created, ready (models loaded) and done with a first batch,
    in seconds after the run started (the latest actor of each)."""
    import json

    run = state.data["maps_run"]
    records = [json.loads(p.read_text()) for p in (study / "explain" / "workers").glob("*.json")]
    records = [r for r in records if r["run_id"] == run["run_id"]]
    out = {f"{prefix}_workers": len(records)}
    for key in ("created", "ready", "first_batch_start", "first_batch_done"):
        values = [r[key] - run["started"] for r in records if key in r]
        if values:
            out[f"{prefix}_{key}_s"] = max(values)
    # thread-seconds of the model loading (file read and build, norm folding, move to the GPU)
    for key in ("models_loaded", "load_read_s", "load_fold_s", "load_move_s"):
        out[f"{prefix}_{key}"] = sum(r.get(key, 0) for r in records)
    return out


def worker_loop(args, plan, config, kernel_rate: float) -> dict:
    """The map worker called in a loop on batches read with pyarrow (no threads, no writes)."""
    import pyarrow.parquet as pq
    from cytotune.explainers.job.worker import MapWorker

    worker = MapWorker(
        {t.trial_id: t.fold_dirs for t in plan.trials},
        {"gradcam": {}},
        plan.manifest.to_dict(),
        config.precision,
    )
    folds = dict(zip(plan.cells["cell_id"], plan.cells["fold"]))
    profile = None
    if args.profile:
        import cProfile

        profile = cProfile.Profile()
        profile.enable()
    start = time.perf_counter()
    rows = 0
    for path in plan.dataset.shard_paths:
        table = pq.read_table(path, columns=["cell_id", "image", "label"])
        table = table.append_column(
            "fold", [[folds[c] for c in table.column("cell_id").to_pylist()]]
        )
        for offset in range(0, table.num_rows, args.batch):
            rows += worker(table.slice(offset, args.batch)).num_rows
    rate = rows / (time.perf_counter() - start)
    if profile is not None:
        import pstats

        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(18)
    return {"worker_no_ray_maps_s": rate, "worker_vs_kernel": rate / kernel_rate}


def end_to_end(args, device: str, kernel_rate: float) -> dict:
    from cytotune.engine.cluster import ensure_ray
    from cytotune.explainers.job.config import ExplainConfig
    from cytotune.explainers.job.layout import maps_path
    from cytotune.explainers.job.maps import run_maps
    from cytotune.explainers.job.plan import build_plan
    from cytotune.explainers.job.state import ExplainState

    root = Path(tempfile.mkdtemp(prefix="bench-explain-"))
    start = time.perf_counter()
    dataset = random_dataset(root / "data", args.cells, args.size)
    study = make_study(root, dataset, args.backbone, args.trials)
    out = {"setup_s": time.perf_counter() - start, "cells": args.cells, "trials": args.trials}
    config = ExplainConfig(
        study=str(study),
        top_k=args.trials,
        methods=("gradcam",),
        stages=("maps",),
        batch_size=args.batch,
        precision="bf16" if device == "cuda" else "fp32",
    )
    plan = build_plan(config)
    state = ExplainState(plan.study_dir)
    maps = args.cells * args.trials
    out["maps"] = maps
    gpus = 1 if device == "cuda" else 0
    variants = [("local", 1)] if "local" in args.executors else []
    if "ray" in args.executors:
        ensure_ray()
        variants += [("ray", k) for k in args.actors_per_gpu]
    for executor, per_gpu in variants:
        name = "local" if executor == "local" else f"{per_gpu}_actors"
        variant = dataclasses.replace(
            config,
            gpus_per_actor=1 / per_gpu,
            actors=per_gpu * gpus or 1,
            overwrite=True,
            batch_size=args.e2e_batch,
            executor=executor,
        )
        start = time.perf_counter()
        run_maps(plan, variant, state, progress=False)
        seconds = time.perf_counter() - start
        out[f"explain_{name}_s"] = seconds
        out[f"explain_{name}_maps_s"] = maps / seconds
        startup = state.data["timings"]["maps_first_batch"]  # until the first batch is back
        out[f"explain_{name}_startup_s"] = startup
        out[f"explain_{name}_after_startup_maps_s"] = maps / (seconds - startup)
        out |= worker_timings(study, state, f"explain_{name}")
        print({k: round(v, 2) for k, v in out.items() if k.startswith(f"explain_{name}")})
        if device == "cuda":  # the local workers' models, cached by this process, go back
            import gc

            gc.collect()
            torch.cuda.empty_cache()
    names = ["local" if e == "local" else f"{k}_actors" for e, k in variants]
    best = max(names, key=lambda k: out[f"explain_{k}_maps_s"])
    out["explain_maps_s"] = out[f"explain_{best}_maps_s"]
    out["explain_best"] = best
    if args.worker_loop:  # the same worker without Ray: Parquet read here, batches in a loop
        out |= worker_loop(args, plan, config, kernel_rate)
    out["kernel_gradcam_img_s"] = kernel_rate
    out["explain_vs_kernel"] = out["explain_maps_s"] / kernel_rate
    for name in names:
        out[f"explain_{name}_vs_kernel"] = out[f"explain_{name}_maps_s"] / kernel_rate
    out["maps_bytes"] = sum(
        f.stat().st_size
        for t in plan.trials
        for f in maps_path(study, t.trial_id, "gradcam").rglob("*.parquet")
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument(
        "--single", type=int, default=64, help="images in the per-image captum loop"
    )
    parser.add_argument("--cells", type=int, default=16384)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--actors-per-gpu", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--e2e-batch", type=int, default=256, help="cells per explain actor batch")
    parser.add_argument(
        "--executors",
        nargs="+",
        default=["local", "ray"],
        choices=["local", "ray"],
        help="end-to-end runs: in this process and/or on --actors-per-gpu Ray actors",
    )
    parser.add_argument(
        "--no-worker-loop",
        dest="worker_loop",
        action="store_false",
        help="skip the bare worker loop (the local executor without its read/write threads)",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the worker loop")
    parser.add_argument("--smoke", action="store_true", help="tiny CPU-sized run")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.smoke:
        args.batch, args.steps, args.single, args.cells, args.trials = 16, 1, 4, 256, 2
        args.actors_per_gpu = [1]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.benchmark = True
    result = {
        "bench": "explain",
        "machine": machine(),
        "backbone": args.backbone,
        "size": args.size,
        "batch": args.batch,
    }
    result |= kernel(args, device)
    result |= end_to_end(args, device, result["gradcam_img_s"])
    write_result(args.out, result)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
