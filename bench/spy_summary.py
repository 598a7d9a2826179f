"""Text summary of a ``py-spy record --format raw`` file (collapsed stacks, one per line with its
sample count): samples per thread, the functions with most samples of their own (the last
frame) and the most inclusive ones (anywhere on the stack, counted once per stack); with
``--by-process`` the same per process (``py-spy record --subprocesses``), with ``--under NAME``
what the functions starting with NAME spend their samples in (two frames deep).

    python bench/spy_summary.py explain.spy.txt [--top 25] [--by-process] [--under fold_prototypes]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict

FRAME_LINE = re.compile(r":\d+\)$")


def read_stacks(path: str) -> list[tuple[list[str], int]]:
    stacks = []
    for line in open(path):
        line = line.rstrip("\n")
        if not line.strip():
            continue
        body, _, count = line.rpartition(" ")
        stacks.append((body.split(";"), int(count)))
    return stacks


def short(frame: str) -> str:
    """``name (path/to/module.py:123)`` -> ``name (module.py)``: lines of one function merged."""
    name, _, where = frame.partition(" (")
    return f"{name} ({FRAME_LINE.sub('', where).rsplit('/', 1)[-1].rstrip(')')})"


def split(frames: list[str]) -> tuple[str, str, list[str]]:
    """(process, thread, code frames) of one stack."""
    process = " ".join(f[:60] for f in frames if f.startswith("process"))
    thread = " ".join(f for f in frames if f.startswith("thread"))
    code = [short(f) for f in frames if not f.startswith(("thread", "process"))]
    return process or "-", thread or "?", code


def report(stacks, top: int, rate: float) -> None:
    total = sum(n for _, n in stacks)
    threads, own, inclusive = Counter(), Counter(), Counter()
    for frames, n in stacks:
        _, thread, code = split(frames)
        threads[thread] += n
        if code:
            own[code[-1]] += n
        for name in set(code):
            inclusive[name] += n
    print(f"{total} samples ({total / rate:.1f} s at {rate:g}/s)")
    for title, counter in (("threads", threads), ("own", own), ("inclusive", inclusive)):
        print(f"-- {title}")
        for name, n in counter.most_common(top):
            print(f"{n:8d} {100 * n / max(total, 1):5.1f}%  {name[:150]}")


def under(stacks, prefix: str, top: int, rate: float) -> None:
    callees = Counter()
    for frames, n in stacks:
        code = split(frames)[2]
        at = next((i for i, f in enumerate(code) if f.startswith(prefix)), None)
        if at is not None:
            callees[" > ".join(code[at + 1 : at + 3]) or "(itself)"] += n
    print(f"-- under {prefix}: {sum(callees.values()) / rate:.1f} s")
    for name, n in callees.most_common(top):
        print(f"{n:8d} {name[:200]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--rate", type=float, default=200.0, help="py-spy --rate (samples/s)")
    parser.add_argument("--by-process", action="store_true")
    parser.add_argument("--under", action="append", default=[])
    args = parser.parse_args()
    stacks = read_stacks(args.path)
    groups = defaultdict(list)
    for frames, n in stacks:
        groups[split(frames)[0] if args.by_process else "all"].append((frames, n))
    for process, part in sorted(groups.items(), key=lambda kv: -sum(n for _, n in kv[1])):
        print(f"==== {process}")
        report(part, args.top, args.rate)
        for prefix in args.under:
            under(part, prefix, args.top, args.rate)


if __name__ == "__main__":
    main()
