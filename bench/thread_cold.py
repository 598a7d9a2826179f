"""What a map worker's first batch costs, and whether a second thread pays it again.

PyTorch keeps cuDNN's execution plans per thread (``thread_local`` caches in
aten/src/ATen/native/cudnn/Conv_v8.cpp), so each of the job's 4 worker threads may build the
plans of every convolution shape it meets: its first batch, and every batch of a new size (a
fold's last, smaller one). This times, on a searched study, one worker's batch of one fold:
  cold and warm in thread A; cold (for it) and warm in a new thread B; a smaller batch (the
  fold's last) in thread A, cold and warm; and the same smaller batch padded to the full size
  in thread A (the full size's plans already built).

    python bench/thread_cold.py --study /tmp/runs/mitocheck --top-k 3 --out thread_cold.json
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def in_thread(fn) -> float:
    """Seconds ``fn()`` takes in a new thread (its result synced to the host by the worker)."""
    out: dict = {}

    def run() -> None:
        start = time.perf_counter()
        fn()
        out["s"] = round(time.perf_counter() - start, 3)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return out["s"]


class Thread:
    """One long-lived thread that runs the functions it is given, one at a time."""

    def __init__(self) -> None:
        import queue

        self.jobs: queue.Queue = queue.Queue()
        self.done: queue.Queue = queue.Queue()
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            fn = self.jobs.get()
            start = time.perf_counter()
            fn()
            self.done.put(round(time.perf_counter() - start, 3))

    def time(self, fn) -> float:
        self.jobs.put(fn)
        return self.done.get()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study", required=True)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    import pyarrow as pa
    import torch
    from cytotune.explainers.job.config import ExplainConfig
    from cytotune.explainers.job.maps import fold_batches, local_cell_tables
    from cytotune.explainers.job.plan import build_plan
    from cytotune.explainers.job.worker import MapWorker, pick_device

    config = ExplainConfig(
        study=args.study, top_k=args.top_k, batch_size=args.batch_size, executor="local"
    )
    plan = build_plan(config)
    device = pick_device(None)
    worker = MapWorker(
        units={t.trial_id: dict(t.fold_dirs) for t in plan.trials},
        methods={m: config.method_options[m] for m in config.method_names},
        manifest=plan.manifest.to_dict(),
        precision=config.precision,
        device=str(device),
    )
    tables = list(fold_batches(local_cell_tables(plan, config), args.batch_size))
    full = next(t for t in tables if t.num_rows == args.batch_size)
    fold = full.column("fold")[0].as_py()
    small = next(
        (t for t in tables if t.num_rows < args.batch_size and t.column("fold")[0].as_py() == fold),
        full.slice(0, args.batch_size * 3 // 4),  # the fold divides evenly: a cut of a full one
    )
    # the small batch padded with its own first rows to the full size (the extra maps dropped)
    repeats = -(-args.batch_size // small.num_rows)
    padded = pa.concat_tables([small] * repeats).slice(0, args.batch_size)
    a, b = Thread(), Thread()
    out = {
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "batch": args.batch_size,
        "small_batch": small.num_rows,
        "thread_a_cold_s": a.time(lambda: worker.explain(full)),
        "thread_a_warm_s": a.time(lambda: worker.explain(full)),
        "thread_b_cold_s": b.time(lambda: worker.explain(full)),
        "thread_b_warm_s": b.time(lambda: worker.explain(full)),
        "thread_a_small_cold_s": a.time(lambda: worker.explain(small)),
        "thread_a_small_warm_s": a.time(lambda: worker.explain(small)),
        "thread_a_padded_s": a.time(lambda: worker.explain(padded)),
        "new_thread_small_s": in_thread(lambda: worker.explain(small)),
    }
    print(json.dumps(out, indent=1))
    Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
