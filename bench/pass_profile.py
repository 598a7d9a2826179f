"""What one attribution pass costs on the GPU, per model family, in the job's two settings.

The explain job's GPU time goes to forward + input-gradient passes: the maps' (bf16 autocast,
channels-last, calls of about 6,400 crops: Integrated Gradients' steps) and the quality
samples' (fp32 with TF32, about 1,300 crops: a fold's share of the 128 sampled cells x 50
steps). For each trial's first fold model, loaded as the map workers load it (norms folded),
and the same checkpoint loaded as the quality stage loads it (unfolded), this times a pass in:
  maps: bf16, channels-last, cuDNN heuristics vs ``cudnn.benchmark``;
  quality: TF32, NCHW (as the stage runs) vs channels-last;
and lists the top CUDA kernels of one maps pass and one quality pass (torch.profiler).

    python bench/pass_profile.py --study /tmp/runs/mitocheck --top-k 3 --out pass_profile.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
REPS = 5


def timed(fn, reps: int = REPS) -> float:

    fn()  # warm: plans, autotuning
    sync()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - start) / reps


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def pass_fn(model, x, fk, bf16: bool):
    import torch

    def step():
        xg = x.detach().requires_grad_(True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            score = model(xg, **fk).float()[:, 0].sum()
        torch.autograd.grad(score, xg)

    return step


def top_kernels(fn, n: int = 10) -> dict:
    import torch

    fn()
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        fn()
        sync()
    events = [e for e in prof.key_averages() if e.self_device_time_total > 0]
    total = sum(e.self_device_time_total for e in events) / 1e6
    top = sorted(events, key=lambda e: -e.self_device_time_total)[:n]
    return {
        "gpu_kernel_s": round(total, 4),
        "kernels": int(sum(e.count for e in events)),
        "top": [(e.key[:80], round(e.self_device_time_total / 1e6, 4), e.count) for e in top],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study", required=True)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--maps-batch", type=int, default=6400)
    parser.add_argument("--quality-batch", type=int, default=1300)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    import torch
    from cytotune.engine.train.checkpoint import load_fold
    from cytotune.explainers.job.config import ExplainConfig
    from cytotune.explainers.job.plan import build_plan
    from cytotune.explainers.job.worker import MapWorker

    config = ExplainConfig(study=args.study, top_k=args.top_k, executor="local")
    plan = build_plan(config)
    shape = tuple(plan.manifest.shape)
    first = {t.trial_id: {min(t.fold_dirs): t.fold_dirs[min(t.fold_dirs)]} for t in plan.trials}
    worker = MapWorker(
        units=first,
        methods={m: config.method_options[m] for m in config.method_names},
        manifest=plan.manifest.to_dict(),
        device=args.device,
    )
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    out = {"gpu": name, "rows": []}
    for t in plan.trials:
        ((fold, directory),) = first[t.trial_id].items()
        loaded = worker.models[(t.trial_id, fold)]
        row = {"trial": t.trial_id, "family": t.family}
        b = args.maps_batch
        x = torch.randn(b, *shape, device=dev).contiguous(memory_format=torch.channels_last)
        fk = {"mask": torch.ones(b, 1, *shape[1:], device=dev)} if loaded.takes_mask else {}
        step = pass_fn(loaded.model, x, fk, bf16=True)
        torch.backends.cudnn.benchmark = False
        row["maps_heuristic_passes_per_s"] = round(b / timed(step), 1)
        row["maps_profile"] = top_kernels(step)
        torch.backends.cudnn.benchmark = True
        start = time.perf_counter()
        step()
        sync()
        row["maps_benchmark_first_s"] = round(time.perf_counter() - start, 3)
        row["maps_benchmark_passes_per_s"] = round(b / timed(step), 1)
        torch.backends.cudnn.benchmark = False
        # the quality stage's model: as load_fold gives it (unfolded, NCHW), TF32
        q = load_fold(directory, dev)
        b = args.quality_batch
        xq = torch.randn(b, *shape, device=dev)
        fq = {"mask": torch.ones(b, 1, *shape[1:], device=dev)} if q.takes_mask else {}
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        step = pass_fn(q.model, xq, fq, bf16=False)
        row["quality_tf32_nchw_passes_per_s"] = round(b / timed(step), 1)
        row["quality_profile"] = top_kernels(step)
        qcl = q.model.to(memory_format=torch.channels_last)
        xcl = xq.contiguous(memory_format=torch.channels_last)
        step = pass_fn(qcl, xcl, fq, bf16=False)
        row["quality_tf32_channels_last_passes_per_s"] = round(b / timed(step), 1)
        step = pass_fn(qcl, xcl, fq, bf16=True)
        row["quality_bf16_channels_last_passes_per_s"] = round(b / timed(step), 1)
        out["rows"].append(row)
        print(json.dumps({k: v for k, v in row.items() if "profile" not in k}), flush=True)
        for key in ("maps_profile", "quality_profile"):
            print(key, row[key]["gpu_kernel_s"], row[key]["kernels"], flush=True)
            for name, seconds, count in row[key]["top"][:6]:
                print(f"   {seconds:8.4f} s {count:5d}  {name}", flush=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
