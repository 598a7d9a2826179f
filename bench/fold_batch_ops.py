"""Operations per cell of the maps' kernel for a batch of several folds against one of a single
fold (:func:`~cytotune.explainers.job.maps.fold_batches`), all methods and trials of a study,
counted by torch.profiler (aten operations: on a GPU each is about one kernel launch).

    python bench/fold_batch_ops.py --study STUDY [--device cuda] --out fold_batch_ops.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METHODS = ("gradcam", "gradcam++", "layercam", "smoothgrad", "integrated_gradients:n_steps=8")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study", required=True)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    import torch
    from cytotune.explainers.job.config import ExplainConfig
    from cytotune.explainers.job.maps import fold_batches, local_cell_tables
    from cytotune.explainers.job.plan import build_plan
    from cytotune.explainers.job.worker import MapWorker

    config = ExplainConfig(
        study=args.study, top_k=args.top_k, batch_size=args.batch_size, executor="local",
        methods=tuple(args.methods),
    )  # fmt: skip
    plan = build_plan(config)
    worker = MapWorker(
        units={t.trial_id: dict(t.fold_dirs) for t in plan.trials},
        methods={m: config.method_options[m] for m in config.method_names},
        manifest=plan.manifest.to_dict(),
        precision=config.precision,
        device=args.device,
    )
    tables = list(local_cell_tables(plan, config))
    regrouped = list(fold_batches(iter(tables), args.batch_size))
    mixed = max(tables, key=lambda t: (len(set(t.column("fold").to_pylist())), t.num_rows))
    single = max(regrouped, key=lambda t: t.num_rows)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if args.device.startswith("cuda"):
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    out: dict = {"device": args.device, "batches": len(tables), "fold_batches": len(regrouped)}
    for name, table in (("mixed", mixed), ("one_fold", single)):
        worker.explain(table)  # warm
        with torch.profiler.profile(activities=activities) as prof:
            start = time.perf_counter()
            worker.explain(table)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        ops = sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))
        out[name] = {
            "rows": table.num_rows,
            "folds": len(set(table.column("fold").to_pylist())),
            "aten_ops": ops,
            "ops_per_cell": round(ops / table.num_rows, 1),
            "seconds": round(seconds, 3),
        }
        print(name, json.dumps(out[name]), flush=True)
    print("batches", out["batches"], "->", out["fold_batches"])
    Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
