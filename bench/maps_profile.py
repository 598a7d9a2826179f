"""Where the explain job's maps stage spends its time, piece by piece, in one process.

Runs the pieces of ``cytotune explain``'s maps stage (local executor) one after another on a
searched study, each timed alone (with a device sync):
  start-up: imports (torch, the job, timm, captum), the plan, the CUDA context, the fold models,
  the cells read, the first batch (cold);
  warm: each (trial, method) over every cell with one worker (the job's kernel: decode,
  attribution, localisation, float16 copy to the host; no writes), then all of them with
  1 worker and with --workers threads (as the job does);
  floor: each trial's fold-0 model, bf16 forward + input gradient on --floor-batch random crops
  (what an attribution pass costs at best), and the passes each method needs per cell;
  profile: torch.profiler over one batch of each method of the first trial (GPU time vs CPU).

    python bench/maps_profile.py --study /tmp/runs/mitocheck --top-k 3 --out maps_profile.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

T0 = time.perf_counter()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
marks: dict[str, float] = {}
FLOOR_REPS = 5


def mark(name: str) -> None:
    marks[name] = round(time.perf_counter() - T0, 3)
    print(f"{marks[name]:8.2f} s  {name}", flush=True)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study", required=True)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--floor-batch", type=int, default=2048)
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument(
        "--quick", action="store_true", help="no per (trial, method) timings and no profile"
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    import torch

    mark("import torch")
    from cytotune.explainers.job.config import ExplainConfig
    from cytotune.explainers.job.executor import in_threads
    from cytotune.explainers.job.maps import fold_batches, local_cell_tables
    from cytotune.explainers.job.plan import build_plan
    from cytotune.explainers.job.worker import MapWorker, pick_device

    mark("import the job")
    import timm  # noqa: F401 - timed: the first model build imports it otherwise

    mark("import timm")
    import captum.attr  # noqa: F401

    mark("import captum")
    extra = {"methods": tuple(args.methods)} if args.methods else {}
    config = ExplainConfig(
        study=args.study, top_k=args.top_k, batch_size=args.batch_size, executor="local", **extra
    )
    plan = build_plan(config)
    mark("plan")
    device = pick_device(args.device)
    torch.zeros(1, device=device)
    sync(device)
    mark("device context")
    trials = [t.trial_id for t in plan.trials]
    units = {t.trial_id: dict(t.fold_dirs) for t in plan.trials}
    methods = {m: config.method_options[m] for m in config.method_names}
    kwargs = {
        "units": units,
        "methods": methods,
        "manifest": plan.manifest.to_dict(),
        "precision": config.precision,
        "device": str(device),
    }
    worker = MapWorker(**kwargs)
    sync(device)
    mark(f"fold models ({len(worker.models)})")
    tables = list(fold_batches(local_cell_tables(plan, config), args.batch_size))
    mark(f"cells read ({sum(t.num_rows for t in tables)} in {len(tables)} tables)")
    result: dict = {"device": str(device), "trials": trials, "methods": list(methods)}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    result["first_batch_s"] = round(timed(lambda: worker.explain(tables[0]), device), 3)
    mark("first batch (cold)")
    families = {t.trial_id: t.family for t in plan.trials}

    def only(trial: str, method: str) -> MapWorker:
        w = MapWorker(**kwargs, models_from=worker, trial_methods={trial: [method]})
        w.models = {k: v for k, v in w.models.items() if k[0] == trial}
        return w

    cells = sum(t.num_rows for t in tables)
    rows = []
    for trial in [] if args.quick else trials:
        for method in methods:
            w = only(trial, method)
            seconds = timed(lambda w=w: [w.explain(t) for t in tables], device)
            rows.append(
                {
                    "trial": trial,
                    "family": families[trial],
                    "method": method,
                    "seconds": round(seconds, 3),
                    "maps_per_s": round(cells / seconds, 1),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    result["warm"] = rows
    result["warm_sum_s"] = round(sum(r["seconds"] for r in rows), 3)
    mark("warm, one (trial, method) at a time")
    all_one = timed(lambda: [worker.explain(t) for t in tables], device)
    result["warm_all_1_worker_s"] = round(all_one, 3)
    mark("warm, all, 1 worker")
    workers = [worker] + [MapWorker(**kwargs, models_from=worker) for _ in range(args.workers - 1)]
    result[f"warm_all_{args.workers}_workers_s"] = round(
        timed(lambda: list(in_threads(tables, workers, lambda w, t: w.explain(t))), device), 3
    )
    mark(f"warm, all, {args.workers} workers in threads")
    result["floor"] = floor(worker, plan, device, args.floor_batch, families)
    mark("floor")
    result["norms_folded"] = worker.norms_folded
    if not (args.no_profile or args.quick) and device.type == "cuda":
        result["profile"] = profile(worker, trials[0], methods, tables[0], kwargs)
        mark("profile")
    result["marks"] = marks
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("warm", "profile")}, indent=1))
    return 0


def floor(worker, plan, device, batch: int, families: dict) -> list[dict]:
    """bf16 forward + input gradient of each trial's fold-0 model on ``batch`` random crops."""
    import torch

    out = []
    shape = tuple(plan.manifest.shape)
    for (trial, fold), loaded in worker.models.items():
        if fold != min(f for t, f in worker.models if t == trial):
            continue
        x = torch.randn(batch, *shape, device=device)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        fk = {}
        if loaded.takes_mask:
            fk["mask"] = torch.ones(batch, 1, *shape[1:], device=device)

        def step(loaded=loaded, x=x, fk=fk):
            xg = x.detach().requires_grad_(True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=worker.bf16):
                score = loaded.model(xg, **fk).float()[:, 0].sum()
            torch.autograd.grad(score, xg)

        step()
        seconds = timed(lambda step=step: [step() for _ in range(FLOOR_REPS)], device) / FLOOR_REPS
        row = {"trial": trial, "family": families[trial], "batch": batch}
        row["passes_per_s"] = round(batch / seconds, 1)
        out.append(row)
        print(json.dumps(row), flush=True)
    return out


def profile(worker, trial, methods, table, kwargs) -> dict:
    """torch.profiler over one batch per method of ``trial``: GPU kernel time vs wall."""
    import torch
    from cytotune.explainers.job.worker import MapWorker

    out = {}
    for method in methods:
        w = MapWorker(**kwargs, models_from=worker, trial_methods={trial: [method]})
        w.models = {k: v for k, v in w.models.items() if k[0] == trial}
        w.explain(table)
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=activities) as prof:
            start = time.perf_counter()
            w.explain(table)
            torch.cuda.synchronize()
            wall = time.perf_counter() - start
        events = prof.key_averages()
        gpu = sum(e.self_device_time_total for e in events) / 1e6
        top = sorted(events, key=lambda e: -e.self_device_time_total)[:8]
        out[method] = {
            "wall_s": round(wall, 4),
            "gpu_kernel_s": round(gpu, 4),
            "launches": int(
                sum(e.count for e in events if e.key.startswith("cuda") and "Launch" in e.key)
            ),
            "top": [(e.key[:60], round(e.self_device_time_total / 1e6, 4), e.count) for e in top],
        }
        print(method, json.dumps(out[method]), flush=True)
    return out


if __name__ == "__main__":
    sys.exit(main())
