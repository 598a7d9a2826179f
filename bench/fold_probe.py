"""A map worker's start-up on the CPU: fold checkpoints loaded and their batch norms folded, with
the folding's probe of 4 crops (before) against 1 (now), on the same files in one run.

The explain job's map worker loads every fold model of its trials before its first batch, and
folds each model's norms on the CPU (explainers/job/norm_folding.py): a probe forward before the
folding and one after, to check the outputs stay equal. On 224 px crops those two ResNet-50
forwards are most of a model's loading. Random ResNet-50 fold checkpoints (bench/explain.py's
study); alternating rounds; median wall and process CPU time of a worker's construction.

    python bench/fold_probe.py --trials 4 --size 224 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=4, help="trials of 2 fold models each")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="also write the result as JSON")
    args = parser.parse_args(argv)

    from _common import machine, random_dataset, write_json
    from cytotune.explainers.job import norm_folding
    from cytotune.explainers.job.config import ExplainConfig
    from cytotune.explainers.job.plan import build_plan
    from cytotune.explainers.job.worker import MapWorker
    from explain import make_study

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dataset = random_dataset(root / "data", 16, args.size)
        study = make_study(root, dataset, args.backbone, args.trials)
        plan = build_plan(ExplainConfig(study=str(study), top_k=args.trials, methods=("gradcam",)))
        kwargs = {
            "units": {t.trial_id: t.fold_dirs for t in plan.trials},
            "methods": {"gradcam": {}},
            "manifest": plan.manifest.to_dict(),
            "device": "cpu",
        }
        MapWorker(**kwargs)  # imports, out of the timing

        def one_round(probe: int) -> tuple[float, float, int]:
            norm_folding.PROBE_BATCH = probe
            cpu, wall = time.process_time(), time.perf_counter()
            worker = MapWorker(**kwargs)
            return time.process_time() - cpu, time.perf_counter() - wall, worker.norms_folded

        rounds: dict[int, list] = {4: [], 1: []}
        for _ in range(args.rounds):
            for probe in rounds:
                rounds[probe].append(one_round(probe))
        norm_folding.PROBE_BATCH = 1
    result = {
        "machine": machine(),
        "checkpoints": sum(len(t.fold_dirs) for t in plan.trials),
        "backbone": args.backbone,
        "size": args.size,
        "rounds": args.rounds,
    }
    for probe, values in rounds.items():
        result[f"probe{probe}_wall_s"] = statistics.median(v[1] for v in values)
        result[f"probe{probe}_cpu_s"] = statistics.median(v[0] for v in values)
        result[f"probe{probe}_norms_folded"] = values[0][2]
    result["wall_ratio"] = result["probe4_wall_s"] / result["probe1_wall_s"]
    write_json(args.out, result, "fold_probe.py", argv)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]
    sys.exit(main())
