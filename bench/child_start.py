"""How long a stage child of the explain job takes to be ready, alone and beside others.

A child (explainers/job/processes.py, ``warm``) imports torch, timm and the quality stage, then
starts CUDA; the quality's first task waits for it. This times each step in fresh interpreters:
one alone (twice), then ``--together`` at once (the job starts 5 such children beside the
overlays' 4 lighter ones and its own imports):

    python bench/child_start.py --out child_start.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
t = {"start": time.time()}
import torch
t["torch"] = time.time()
import timm
t["timm"] = time.time()
import cytotune.explainers.job.scores
t["scores"] = time.time()
if torch.cuda.is_available():
    torch.cuda.init()
    t["cuda_init"] = time.time()
    torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    t["context"] = time.time()
print(json.dumps(t))
"""


def run(count: int) -> list[dict]:
    """``count`` children started at once: each one's steps, in seconds from its launch."""
    launched = time.time()
    children = [
        subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
        for _ in range(count)
    ]
    out = []
    for child in children:
        stdout, _ = child.communicate()
        marks = json.loads(stdout.strip().splitlines()[-1])
        previous = launched
        steps = {}
        for name, value in marks.items():
            steps[name] = round(value - previous, 2)
            previous = value
        steps["ready"] = round(previous - launched, 2)
        out.append(steps)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--together", type=int, nargs="+", default=[5, 9])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    result = {"alone": run(1) + run(1)}
    for count in args.together:
        result[f"{count} at once"] = run(count)
    for name, rows in result.items():
        print(name, [r["ready"] for r in rows], "first:", rows[0])
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
