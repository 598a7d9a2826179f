"""One explain run's timeline, in seconds from its maps stage's start: the job's marks, each map
worker's start-up and first batch (``explain/workers/``; a lone worker, which writes in a thread
of its own, records no first batch), each quality process's tasks (``explain/workers/quality/``)
and how busy the GPU was in each phase
(nvidia-smi's utilization, sampled every 100 ms by bench/explain_gpu.sh: the share of time some
kernel ran).

    python bench/explain_timeline.py explain.json WORKERS_DIR [SMI_CSV] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from pathlib import Path


def workers_of(directory: Path, run_id: str) -> list[dict]:
    """The worker records of one maps run (a directory keeps earlier runs' too)."""
    records = [json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))]
    return [r for r in records if r.get("run_id") == run_id]


def gpu_samples(path: Path) -> list[tuple[float, float]]:
    """(epoch seconds, utilization %) from nvidia-smi's csv (local-time timestamps)."""
    out = []
    for line in path.read_text().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 2:
            continue
        try:
            stamp = datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f")
            out.append((time.mktime(stamp.timetuple()) + stamp.microsecond / 1e6, float(parts[1])))
        except ValueError:
            continue
    return out


def busy(samples: list[tuple[float, float]], start: float, end: float) -> float | None:
    """Mean utilization of the samples in [start, end)."""
    values = [u for t, u in samples if start <= t < end]
    return round(sum(values) / len(values), 1) if values else None


def quality_of(directory: Path, start: float) -> list[dict]:
    """Each quality process's record (``quality/`` under the workers' directory, written by
    scores.QualityTrace): when its models were ready, its first task started and its last
    ended, how long each context worked, its last task and its peak GPU memory reserved."""
    out = []
    for path in sorted((directory / "quality").glob("*.json")):
        r = json.loads(path.read_text())
        tasks = sorted(r["tasks"], key=lambda t: t["end"])
        if not tasks:
            continue
        busy_s: dict[int, float] = {}
        for t in tasks:
            busy_s[t["context"]] = busy_s.get(t["context"], 0.0) + t["end"] - t["start"]
        last = tasks[-1]
        out.append(
            {
                "trials": sorted({t["trial_id"] for t in tasks}),
                "started": round(r["started"] - start, 2),
                "ready": round(r.get("ready", r["started"]) - start, 2),
                "first_task": round(min(t["start"] for t in tasks) - start, 2),
                "last_end": round(last["end"] - start, 2),
                "context_busy_s": {k: round(v, 2) for k, v in sorted(busy_s.items())},
                "last_task": f"{last['trial_id']} {'+'.join(last['methods'])} fold {last['fold']}"
                f" ({round(last['end'] - last['start'], 2)} s)",
                "max_memory_gib": r.get("max_memory_gib"),
                "memory_retries": r.get("memory_retries"),
            }
        )
    return out


def timeline(
    state: dict,
    workers: list[dict],
    samples: list[tuple[float, float]],
    quality: list[dict] | None = None,
) -> dict:
    start = state["maps_run"]["started"]
    marks = {
        k: round(v - start, 2)
        for k, v in sorted(state.get("marks", {}).items(), key=lambda kv: kv[1])
    }
    end = state["finished"]
    first = start + state.get("timings", {}).get("maps_first_batch", 0.0)
    maps_end = start + state.get("timings", {}).get("maps", 0.0)
    out = {
        "marks": marks,
        "end": round(end - start, 2),
        "workers": [
            {
                k: round(r[k] - start, 2)
                for k in ("created", "ready", "first_batch_start", "first_batch_done", "done")
                if isinstance(r.get(k), float)
            }
            | ({"memory_retries": r["memory_retries"]} if "memory_retries" in r else {})
            for r in workers
        ],
        "quality": quality or [],
    }
    if samples:
        command = start + marks.get("command", 0.0)
        phases = {
            "before the maps": (command, start),
            "maps start -> first batch": (start, first),
            "first batch -> maps end": (first, maps_end),
            "maps end -> job end": (maps_end, end),
        }
        out["gpu_busy_percent"] = {name: busy(samples, a, b) for name, (a, b) in phases.items()}
        out["gpu_busy_by_second"] = [
            busy(samples, start + s, start + s + 1)
            for s in range(int(command - start) - 1, int(end - start) + 1)
        ]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("state", type=Path)
    parser.add_argument("workers", type=Path)
    parser.add_argument("smi", type=Path, nargs="?")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    state = json.loads(args.state.read_text())
    samples = gpu_samples(args.smi) if args.smi and args.smi.is_file() else []
    start = state["maps_run"]["started"]
    workers = workers_of(args.workers, state["maps_run"]["run_id"])
    out = timeline(state, workers, samples, quality_of(args.workers, start))
    for key, value in out.items():
        print(f"{key}: {value}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
