"""Where the explain job's tail (population figures, overlays) spends its time, on a study whose
maps exist: the cost of one atomic file write (write, fsync, rename), each (trial, method)
pair's population figures and overlays drawn one after another in this process (the first
pair under cProfile), then both stages as the job runs them (stage processes or threads).

    python bench/tail_profile.py --study STUDY --out tail_profile.json
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_cost(directory: Path, files: int = 200, size: int = 20_000) -> dict:
    """Seconds per atomic write (fsync included) and per plain write of ``size`` bytes."""
    from cytotune.engine.io import atomic_write_bytes

    data = bytes(size)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        start = time.perf_counter()
        for i in range(files):
            atomic_write_bytes(Path(tmp) / f"a{i}.png", data)
        atomic = (time.perf_counter() - start) / files
        start = time.perf_counter()
        for i in range(files):
            (Path(tmp) / f"p{i}.png").write_bytes(data)
        plain = (time.perf_counter() - start) / files
    return {"atomic_ms": round(atomic * 1e3, 3), "plain_ms": round(plain * 1e3, 3)}


def top(profile: cProfile.Profile, n: int = 12) -> list:
    stats = pstats.Stats(profile, stream=io.StringIO()).sort_stats("tottime")
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:n]
    return [(f"{Path(k[0]).name}:{k[1]}:{k[2]}", round(v[2], 3), v[1]) for k, v in rows]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study", required=True)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from cytotune.explainers.job import overlays as O
    from cytotune.explainers.job import populations as P
    from cytotune.explainers.job.config import ExplainConfig
    from cytotune.explainers.job.layout import explain_dir, maps_path
    from cytotune.explainers.job.plan import build_plan
    from cytotune.explainers.job.state import ExplainState

    config = ExplainConfig(study=args.study, top_k=args.top_k, executor="local", overwrite=True)
    plan = build_plan(config)
    out: dict = {"writes": write_cost(explain_dir(plan.study_dir))}
    print("writes", out["writes"], flush=True)
    classes, groups = P.class_of_cells(plan)
    start = time.perf_counter()
    shape_means = P.gmean_images(plan, classes, groups, 1e-3)
    out["gmean_images_s"] = round(time.perf_counter() - start, 3)
    work = P.population_work(plan, config, classes, groups, shape_means, 1e-3)
    pairs = [
        (t.trial_id, m)
        for t in plan.trials
        for m in config.method_names
        if maps_path(plan.study_dir, t.trial_id, m).exists()
    ]
    seconds = []
    for i, (trial, method) in enumerate(pairs):
        source = maps_path(plan.study_dir, trial, method)
        profile = cProfile.Profile() if i == 0 else None
        start = time.perf_counter()
        if profile:
            profile.enable()
        P.population_of(work, trial, method, source)
        if profile:
            profile.disable()
            out["population_first_pair_top"] = top(profile)
        seconds.append(round(time.perf_counter() - start, 3))
    out["population_pair_s"] = seconds
    print("population per pair", seconds, flush=True)
    state = ExplainState(plan.study_dir)
    for name, stage in (("population", P.run_population), ("overlays", O.run_overlays)):
        start = time.perf_counter()
        stage(plan, config, state)
        out[f"{name}_stage_s"] = round(time.perf_counter() - start, 3)
        print(f"{name} stage (as the job runs it)", out[f"{name}_stage_s"], flush=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out.get("population_first_pair_top"), indent=0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
