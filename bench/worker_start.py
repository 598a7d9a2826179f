"""A map worker's start-up: its fold checkpoints read, built, norm-folded and moved to the device,
timed per variant of the loading on the same files in one run.

The explain job's map worker loads every fold model of its trials before its first batch (the
1M-map job: 64 ResNet-50 checkpoints at 224 px, about 20 s of its start-up on the GPU machine).
Each variant sets environment switches (``NAME=ENV=VALUE,ENV=VALUE``; ``probe4`` sets the norm
folding's probe to 4 crops, as before session 22) and constructs a worker; rounds alternate the
variants. Reported per variant: median wall, process CPU time and the worker's thread-seconds per
phase (``load_read_s``, ``load_fold_s``, ``load_move_s``: file read and build, norm folding,
move to the device).

    python bench/worker_start.py --trials 4 --size 224 --rounds 3
    python bench/worker_start.py --device cuda --trials 32 --variants default \\
        share0=CYTOTUNE_LOAD_SHARE=0 t16=CYTOTUNE_LOAD_THREADS=16 nofold=CYTOTUNE_FOLD_NORMS=0
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("load_read_s", "load_fold_s", "load_move_s")


def parse_variant(text: str) -> tuple[str, dict[str, str], int | None]:
    """``name``, ``name=ENV=VALUE,ENV=VALUE`` or ``probe4`` -> (name, environment, probe)."""
    if text == "probe4":
        return text, {}, 4
    name, _, rest = text.partition("=")
    items = [item for item in rest.split(",") if item]
    if not name or not name.isidentifier() or any("=" not in item for item in items):
        raise SystemExit(f"variant {text!r}: give NAME or NAME=ENV=VALUE[,ENV=VALUE...]")
    return name, dict(item.split("=", 1) for item in items), None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=4, help="trials of 2 fold models each")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variants", nargs="+", default=["default", "probe4"])
    parser.add_argument("--out", type=Path, default=None, help="also write the result as JSON")
    args = parser.parse_args(argv)

    import torch
    from _common import machine, random_dataset, write_json
    from cytotune.explainers.job import norm_folding
    from cytotune.explainers.job.config import ExplainConfig
    from cytotune.explainers.job.plan import build_plan
    from cytotune.explainers.job.worker import MapWorker
    from explain import make_study

    variants = [parse_variant(v) for v in args.variants]
    names = [name for name, _, _ in variants]
    if len(set(names)) < len(names):
        raise SystemExit(f"variant names must differ: {names}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dataset = random_dataset(root / "data", 16, args.size)
        study = make_study(root, dataset, args.backbone, args.trials)
        plan = build_plan(ExplainConfig(study=str(study), top_k=args.trials, methods=("gradcam",)))
        kwargs = {
            "units": {t.trial_id: t.fold_dirs for t in plan.trials},
            "methods": {"gradcam": {}},
            "manifest": plan.manifest.to_dict(),
            "device": args.device,
        }
        MapWorker(**kwargs)  # imports and the device's start, out of the timing

        def one_round(env: dict[str, str], probe: int | None) -> dict:
            saved = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            norm_folding.PROBE_BATCH = probe or 1
            try:
                cpu, wall = time.process_time(), time.perf_counter()
                worker = MapWorker(**kwargs)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                out = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
            finally:
                norm_folding.PROBE_BATCH = 1
                for k, v in saved.items():
                    os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
            out |= {k: worker.timing[k] for k in PHASES}
            out["norms_folded"] = worker.norms_folded
            del worker
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
            return out

        rounds: dict[str, list[dict]] = {name: [] for name, _, _ in variants}
        for _ in range(args.rounds):
            for name, env, probe in variants:
                rounds[name].append(one_round(env, probe))
    result = {
        "machine": machine(),
        "cpus": os.cpu_count(),
        "device": args.device,
        "checkpoints": sum(len(t.fold_dirs) for t in plan.trials),
        "backbone": args.backbone,
        "size": args.size,
        "rounds": args.rounds,
        "variants": {
            name: env | ({"probe": probe} if probe else {}) for name, env, probe in variants
        },
    }
    for name, values in rounds.items():
        for key in values[0]:
            result[f"{name}_{key}"] = statistics.median(v[key] for v in values)
    first = variants[0][0]
    for name in rounds:
        result[f"{name}_wall_vs_{first}"] = result[f"{name}_wall_s"] / result[f"{first}_wall_s"]
    write_json(args.out, result, "worker_start.py", argv)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]
    sys.exit(main())
