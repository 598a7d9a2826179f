"""Loading fold checkpoints: mapped + built on the meta device (now) vs read + a copy of a built
template (before), on the same files in one run.

The explain job loads every fold model of its trials before its first batch, in threads that
share one interpreter lock, so the CPU time of a load is what a second loading thread waits on.
Random ResNet-50 fold checkpoints (bench/explain.py's study); alternating rounds; median of
``--rounds`` of the process's CPU time and of the wall time.

    python bench/load_folds.py --trials 8 --rounds 5
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
    parser.add_argument("--trials", type=int, default=8, help="trials of 2 fold models each")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="also write the result as JSON")
    args = parser.parse_args(argv)

    import torch
    from _common import random_dataset
    from cytotune.engine.train import checkpoint
    from explain import make_study

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        study = make_study(root, random_dataset(root / "data", 64, 32), args.backbone, args.trials)
        dirs = sorted(Path(study).glob("tune/trial_*/checkpoint_*/fold_*"))
        checkpoint.load_fold(dirs[0])  # imports and the template, out of the timing
        mapped = torch.load

        def read(*a, **k):  # the loader before: the whole file read, no mapping
            k.pop("mmap", None)
            return mapped(*a, **k)

        def one_round(now: bool) -> tuple[float, float]:
            torch.load = mapped if now else read
            for key in list(checkpoint._BUILDS_EMPTY):
                checkpoint._BUILDS_EMPTY[key] = now  # False: the template copy
            cpu, wall = time.process_time(), time.perf_counter()
            for directory in dirs:
                checkpoint.load_fold(directory)
            return time.process_time() - cpu, time.perf_counter() - wall

        rounds = {"now": [], "before": []}
        for _ in range(args.rounds):
            for name in rounds:
                rounds[name].append(one_round(name == "now"))
        torch.load = mapped
    result = {"checkpoints": len(dirs), "backbone": args.backbone, "rounds": args.rounds}
    for name, values in rounds.items():
        result[f"{name}_cpu_s"] = statistics.median(v[0] for v in values)
        result[f"{name}_wall_s"] = statistics.median(v[1] for v in values)
    result["cpu_ratio"] = result["before_cpu_s"] / result["now_cpu_s"]
    result["wall_ratio"] = result["before_wall_s"] / result["now_wall_s"]
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]
    sys.exit(main())
