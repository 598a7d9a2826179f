"""One GPU vs two: the same search and the same explain job on 1 and on 2 GPUs (issue 15, item 3).

Each run is a child process with ``CUDA_VISIBLE_DEVICES`` naming 1 or 2 GPUs, so it starts its
own local Ray that sees exactly those. The search is one small study (synthetic metastasis
crops, no scheduler, so both runs do the same work; fractional GPUs pack
several trials per GPU); the explain job explains the 1-GPU study's two best trials over every
cell (``--overwrite``, maps stage only) with each executor of ``--explain-runs``: ``local`` (the
job in the process, 4 worker threads per visible GPU) and ``ray`` (4 actors per visible GPU).
``nvidia-smi`` is sampled every 0.5 s during each run. Rows are written after every run, so a
call cut short keeps what it measured.

Reported per run (bench/results/scale.json, a list of objects):
  job, gpus, throughput, unit, speedup (vs 1 GPU), device, wall_s, gpu_util_mean (per GPU),
  for the search: trial-epochs, the best score, the time to reach the 1-GPU run's best score
  (time_to_1gpu_best_s; null when the run never reaches it), when the first trial started and
  the last ended (seconds from the command's start) and the mean trial's wall time;
  for the explain job: the executor.

On the GPU machine (2 GPUs; Ray, Optuna and captum from the bundle, see bench/real/device.sh):
  bash bench/real/device.sh python bench/scale.py --out $OUT/scale.json
Here, on the CPU, end to end with tiny settings (no nvidia-smi: utilisation is null):
  python bench/scale.py --smoke-test
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

# settings per mode: dataset size, crop size, trials, epochs, GPU share per trial
SETTINGS = {
    "gpu": {"race": "epochs", "cells": 6000, "size": 64, "trials": 16, "epochs": 6, "gpus_per_trial": 0.25,
            "family": "backbone", "batch_size": 256, "explain_limit": None,
            "methods": ("gradcam", "saliency")},
    # enough trials (6 rounds of 4 on one GPU, 3 of 8 on two) that the command's own start-up
    # (Ray, about 15 s) is a small share, long enough that training, not each trial's start-up,
    # fills the GPU, raced over
    # folds as a study is by default (``race: epochs`` writes every fold's weights and optimiser
    # state after every epoch: about 1 GB per epoch for a ResNet-34 trial of 3 folds); the
    # explain job with Integrated Gradients (64 steps: 64 forward + backward passes per map)
    "long": {"race": "folds", "cells": 6000, "size": 64, "trials": 24, "epochs": 16, "gpus_per_trial": 0.25,
             "family": "backbone", "batch_size": 256, "explain_limit": None,
             "methods": ("gradcam", "saliency", "integrated_gradients:n_steps=64")},
    # many shorter trials (12 rounds of 4 on one GPU, 6 of 8 on two), so the last round's tail and
    # the command's start-up weigh less; a seeded random sampler, so both runs train the very same
    # configurations (TPE's later samples depend on which trials finished first)
    "many": {"race": "folds", "cells": 6000, "size": 64, "trials": 48, "epochs": 8, "gpus_per_trial": 0.25,
             "family": "backbone", "batch_size": 256, "explain_limit": None, "sampler": "random",
             "methods": ("gradcam", "saliency", "integrated_gradients:n_steps=64")},
    # the short search (its study is what gets explained), then the explain job of "long"
    "explain": {"race": "epochs", "cells": 6000, "size": 64, "trials": 16, "epochs": 6, "gpus_per_trial": 0.25,
                "family": "backbone", "batch_size": 256, "explain_limit": None,
                "methods": ("gradcam", "saliency", "integrated_gradients:n_steps=64")},
    "smoke": {"race": "folds", "cells": 96, "size": 24, "trials": 2, "epochs": 1, "gpus_per_trial": 0, "sampler": "random",
              "family": "small_cnn", "batch_size": 32, "explain_limit": 48,
              "methods": ("gradcam", "saliency")},
}  # fmt: skip
SPACE = {
    "name": "scale",
    "default_family": "backbone",
    "families": {
        "backbone": {
            "backbone": {"type": "categorical", "choices": ["resnet18", "resnet34"]},
            "stem_pool": False,
            "drop_rate": {"type": "float", "low": 0.0, "high": 0.3},
        },
        "small_cnn": {
            "conv_layers": {"type": "int", "low": 1, "high": 2},
            "filters": {"type": "categorical", "choices": [4, 8]},
            "dense_units": 16,
        },
    },
    "train": {"lr": {"type": "float", "low": 5e-4, "high": 5e-3, "log": True}},
}


# the GPU-bound explain job (--big-explain): bench/explain.py's 1M-map case, Grad-CAM only
BIG = {"methods": ("gradcam",), "explain_batch": 256, "explain_limit": None}


def big_study(work: Path, cells: int, trials: int, smoke: bool) -> Path:
    """Random crops and a study of randomly initialised fold checkpoints (bench/explain.py)."""
    from _common import random_dataset
    from explain import make_study

    root = work / "big"
    size, backbone = (24, "resnet18") if smoke else (224, "resnet50")
    dataset = random_dataset(root / "data", cells, size)
    return make_study(root, dataset, backbone, trials)


# -- children: one run each, with CUDA_VISIBLE_DEVICES set by the parent ---------------------
def child_search(work: Path, name: str, settings: dict) -> dict:
    from cytotune.engine.search import StudyConfig
    from cytotune.engine.search.runner import run_search

    space = {**SPACE, "default_family": settings["family"]}
    space["families"] = {settings["family"]: SPACE["families"][settings["family"]]}
    space["train"] = {**SPACE["train"], "batch_size": settings["batch_size"]}
    (work / "space.yaml").write_text(yaml.safe_dump(space))
    study = {
        "name": name,
        "dataset": "dataset",
        "folds": {"k": 3, "group": "well"},
        "space": "space.yaml",
        "budget": {"trials": settings["trials"], "max_epochs": settings["epochs"],
                   "race": settings["race"], "max_concurrent": 64},
        "resources": {"cpus": 1, "gpus": settings["gpus_per_trial"]},
        "objective": {"metric": "balanced_accuracy"},
        "scheduler": "none",
        "seed": 0,
        "sampler": settings.get("sampler", "tpe"),
        "storage": "studies",
        "train": {"precision": "auto"},
    }  # fmt: skip
    (work / f"{name}.yaml").write_text(yaml.safe_dump(study))
    config = StudyConfig.from_yaml(work / f"{name}.yaml")
    start = time.time()
    store = run_search(config, address="local", verbose=False, started=start)
    wall = time.time() - start
    trials = store.table("trials")
    done = trials[trials["status"] == "completed"]
    score = "val/balanced_accuracy"
    curve = sorted((float(r["ended_at"]) - start, float(r[score])) for _, r in done.iterrows())
    started = trials["started_at"].dropna().astype(float) - start
    ended = trials["ended_at"].dropna().astype(float) - start
    setup = done["time/setup_s"] if "time/setup_s" in done else None
    return {
        "startup": store.status().get("startup"),  # seconds to Ray ready and to Tune's start
        "trial_setup_s_mean": None if setup is None else float(setup.astype(float).mean()),
        "first_trial_start_s": float(started.min()) if len(started) else None,
        "last_trial_end_s": float(ended.max()) if len(ended) else None,
        "trial_s_mean": float((done["ended_at"] - done["started_at"]).astype(float).mean()),
        "study": store.path,
        "wall_s": wall,
        "trial_epochs": int(trials["epochs_done"].fillna(0).sum()),
        "best": max((s for _, s in curve), default=None),
        "curve": curve,  # (seconds since start, score) per completed trial
        "trials": len(trials),
        "failed": int((trials["status"] == "failed").sum()),
    }


def child_explain(study: str, executor: str, settings: dict) -> dict:
    from cytotune.explainers.job.config import ExplainConfig
    from cytotune.explainers.job.runner import run_explain

    config = ExplainConfig(
        study=study, top_k=settings.get("top_k", 2), methods=settings["methods"], stages=("maps",),
        limit=settings["explain_limit"], overwrite=True, batch_size=settings.get("explain_batch", 128),
        executor=executor,
        address="local" if executor == "ray" else None,
    )  # fmt: skip
    shutil.rmtree(Path(study) / "explain" / "workers", ignore_errors=True)  # this run's only
    start = time.time()
    profile = os.environ.get("SCALE_PROFILE")  # cProfile of this process's main thread
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    plan, state = run_explain(config, progress=False, log=lambda *_: None)
    if profile:
        profiler.disable()
        gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "").count(",") + 1
        profiler.dump_stats(f"{profile}.{gpus}gpu.{int(start)}.prof")
    wall = time.time() - start
    maps = len(plan.cells) * len(plan.trials) * len(config.method_names)
    timings = state.data.get("timings", {})
    seconds = timings.get("maps", wall)
    workers = [
        json.loads(p.read_text()) for p in (Path(study) / "explain" / "workers").glob("*.json")
    ]
    first = min((w.get("first_batch_done", float("inf")) for w in workers), default=None)
    return {"wall_s": wall, "maps": maps, "maps_s": seconds, "failures": state.data.get("failures"),
            "stage_timings": timings,
            # seconds from the command's start: workers ready, first batch back, last worker done
            "workers_ready_s": max((w["ready"] for w in workers), default=start) - start,
            "first_batch_s": None if first in (None, float("inf")) else first - start,
            "workers_done_s": max((w.get("done", start) for w in workers), default=start) - start,
            "workers": len(workers)}  # fmt: skip


# -- the parent: runs the children, samples nvidia-smi, writes the results --------------------
class GpuSampler:
    """``nvidia-smi`` utilisation every 0.5 s while a run lasts (nothing without nvidia-smi)."""

    def __init__(self) -> None:
        self.samples: list[list[float]] = []
        self.available = shutil.which("nvidia-smi") is not None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
        while not self._stop.wait(0.5):
            try:
                out = subprocess.run(query, capture_output=True, text=True, timeout=5).stdout
                self.samples.append([float(x) for x in out.split()])
            except (subprocess.SubprocessError, ValueError, OSError):
                continue

    def __enter__(self):
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.available:
            self._thread.join(timeout=10)

    def mean(self, gpus: list[int]) -> list[float] | None:
        if not self.samples:
            return None
        return [
            round(sum(s[g] for s in self.samples if len(s) > g) / len(self.samples), 1)
            for g in gpus
        ]


def device_name() -> str:
    if shutil.which("nvidia-smi"):
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10,
        ).stdout.split("\n")  # fmt: skip
        return out[0].strip() or "GPU"
    return f"CPU ({os.cpu_count()} cores, smoke test)"


def run_child(args: list[str], gpus: list[int], timeout_s: float) -> tuple[dict, list | None]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus)), "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, str(Path(__file__).resolve()), "--child", *args]
    with GpuSampler() as sampler:
        proc = subprocess.run(
            command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s
        )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :]), sampler.mean(gpus)


def _timings(result: dict) -> dict:
    keys = ("stage_timings", "workers_ready_s", "first_batch_s", "workers_done_s", "workers")
    return {k: result.get(k) for k in keys}


def time_to_reach(curve: list, target: float | None) -> float | None:
    if target is None:
        return None
    return next((t for t, score in curve if score >= target), None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/scale.json")
    parser.add_argument("--work", type=Path, default=Path("/tmp/cytotune-scale"))
    parser.add_argument("--gpus", type=int, nargs=2, default=[1, 2], metavar=("FEW", "MANY"))
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per run")
    parser.add_argument("--smoke-test", action="store_true", help="CPU, tiny settings")
    parser.add_argument(
        "--mode", choices=("gpu", "long", "many", "explain"), default="gpu", help="GPU workload"
    )
    parser.add_argument(
        "--search-gpus", type=int, nargs="+", help="GPU counts to search on (default --gpus)"
    )
    parser.add_argument(
        "--explain-runs", nargs="+", metavar="GPUS:EXECUTOR",
        help="explain runs (default: 1:local 2:local 2:ray with --gpus 1 2)",
    )  # fmt: skip
    parser.add_argument(
        "--big-explain", type=int, nargs=2, metavar=("CELLS", "TRIALS"),
        help="also a GPU-bound explain job: Grad-CAM of TRIALS x 2 ResNet-50 fold models "
        "(random weights) over CELLS random 224 px crops, on each GPU count, executor local",
    )  # fmt: skip
    parser.add_argument("--no-search", action="store_true", help="only the --big-explain job")
    parser.add_argument(
        "--weak-fraction", type=float, default=1.0,
        help="share of non-reference cells that show their well's phenotype (below 1 the task "
        "has no perfect score, so the time to the 1-GPU run's best score tells runs apart; at 1 "
        "every run reaches balanced accuracy 1.0 in its first round)",
    )  # fmt: skip
    parser.add_argument(
        "--explain-top-k", type=int, default=2, help="trials the study's explain job covers"
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke_test else args.mode
    settings = SETTINGS[mode]

    if args.child:  # inside a run: print one RESULT line for the parent
        kind, *rest = args.child
        if kind == "search":
            os.chdir(rest[0])
            result = child_search(Path(rest[0]), rest[1], settings)
        elif kind == "explain-big":
            result = child_explain(rest[0], rest[1], {**settings, **BIG, "top_k": int(rest[2])})
        else:
            result = child_explain(rest[0], rest[1], {**settings, "top_k": int(rest[2])})
        print("RESULT " + json.dumps(result, default=str))
        return 0

    if not args.smoke_test:
        visible = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10
        ).stdout.count("GPU ")
        if visible < max(args.gpus):
            raise SystemExit(f"{max(args.gpus)} GPUs needed, nvidia-smi lists {visible}")
    from cytotune.engine.data.folds import make_folds, save_folds
    from cytotune.engine.synth import write_dataset

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    dataset = args.work / "dataset"
    write_dataset("metastasis", dataset, settings["cells"], size=settings["size"], seed=0,
                  progress=False, weak_fraction=args.weak_fraction)  # fmt: skip
    save_folds(dataset, make_folds(dataset, k=3, group="well", name="k3-well"))
    device = device_name()
    smoke = ["--smoke-test"] if args.smoke_test else ["--mode", mode]
    rows, searches = [], {}
    out = (
        args.out
        if not args.smoke_test or "--out" in (argv or sys.argv)
        else args.work / "scale.json"
    )
    command = "python bench/scale.py " + " ".join(argv or sys.argv[1:])

    def save() -> list[dict]:
        """Every row so far, with its speedup over the fewest GPUs (the first executor)."""
        for job, workload in {(r["job"], r.get("workload")) for r in rows}:
            mine = [r for r in rows if r["job"] == job and r.get("workload") == workload]
            if mine:
                base = min(mine, key=lambda r: r["gpus"])
                for row in mine:
                    row["speedup"] = round(row["throughput"] / base["throughput"], 3)
        report = [{**r, "mode": mode, "command": command} for r in rows]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        return report

    def search(n: int) -> None:
        result, util = run_child(
            ["search", str(args.work), f"scale-{n}gpu", *smoke], list(range(n)), args.timeout
        )
        searches[n] = result
        rows.append({"job": "search", "gpus": n, "throughput": result["trial_epochs"] / result["wall_s"],
                     "unit": "trial-epochs/s", "device": device, "wall_s": result["wall_s"],
                     "trial_epochs": result["trial_epochs"], "best": result["best"],
                     "gpu_util_mean": util, "failed_trials": result["failed"],
                     "first_trial_start_s": result["first_trial_start_s"],
                     "last_trial_end_s": result["last_trial_end_s"],
                     "trial_s_mean": result["trial_s_mean"],
                     "trial_setup_s_mean": result["trial_setup_s_mean"],
                     "startup": result["startup"],
                     "sampler": settings.get("sampler", "tpe"),
                     "weak_fraction": args.weak_fraction})  # fmt: skip
        target = searches[first]["best"]
        for row in rows:
            if row["job"] == "search":
                row["time_to_1gpu_best_s"] = time_to_reach(searches[row["gpus"]]["curve"], target)
        print(
            f"search {n} GPU(s): {rows[-1]['throughput']:.3f} trial-epochs/s in {result['wall_s']:.0f} s, util {util}"
        )
        save()

    def explain(kind: str, study: str, n: int, executor: str, *extra: str, **row) -> None:
        result, util = run_child(
            [kind, study, executor, *extra, *smoke], list(range(n)), args.timeout
        )
        rows.append({"job": "explain", "gpus": n, "executor": executor, **row,
                     "throughput": result["maps"] / result["maps_s"],
                     "unit": "maps/s", "device": device, "wall_s": result["wall_s"],
                     "maps": result["maps"], "gpu_util_mean": util,
                     "failures": result["failures"] or None, **_timings(result)})  # fmt: skip
        print(f"{kind} {n} GPU(s), {executor}: {rows[-1]['throughput']:.1f} maps/s, util {util}")
        save()

    # the first search's study is the one explained; the explain runs come before the other
    # searches, so a call cut short still has both jobs measured on the first GPU count
    search_gpus = args.search_gpus or args.gpus
    first = search_gpus[0]
    few, many = args.gpus
    if not args.no_search:
        search(first)
        for run in args.explain_runs or [f"{few}:local", f"{many}:local", f"{many}:ray"]:
            gpus, executor = run.split(":")
            explain("explain", searches[first]["study"], int(gpus), executor,
                    str(args.explain_top_k), workload=f"top {args.explain_top_k} trials")  # fmt: skip
        for n in search_gpus[1:]:
            search(n)
    if args.big_explain:
        start = time.time()
        study = big_study(args.work, *args.big_explain, args.smoke_test)
        print(f"big explain study written in {time.time() - start:.0f} s")
        cells, trials = args.big_explain
        for n in args.gpus:
            workload = f"gradcam, resnet50 224 px, {cells} cells x {trials} trials"
            explain("explain-big", str(study), n, "local", str(trials), workload=workload)
    report = save()
    print(f"wrote {out}")
    for r in report:
        print(
            f"{r['job']:<8} {r['gpus']} GPU {r.get('executor', ''):<6} {r['throughput']:9.3f} {r['unit']:<15} x{r['speedup']:.2f}  {r['device']}"
        )
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
