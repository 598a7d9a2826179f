"""Text summary of a ``py-spy record --format raw`` file (collapsed stacks, one per line with its
sample count): samples per thread, the functions with most samples of their own (the last
frame) and the most inclusive ones (anywhere on the stack, counted once per stack).

    python bench/spy_summary.py explain.spy.txt [--top 25]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    stacks = read_stacks(args.path)
    total = sum(n for _, n in stacks)
    threads, own, inclusive = Counter(), Counter(), Counter()
    for frames, n in stacks:
        head = [f for f in frames if f.startswith(("thread", "process"))]
        code = [short(f) for f in frames if not f.startswith(("thread", "process"))]
        threads[" ".join(head) or "?"] += n
        if code:
            own[code[-1]] += n
        for name in set(code):
            inclusive[name] += n
    print(f"{total} samples")
    for title, counter in (("threads", threads), ("own", own), ("inclusive", inclusive)):
        print(f"-- {title}")
        for name, n in counter.most_common(args.top):
            print(f"{n:8d} {100 * n / max(total, 1):5.1f}%  {name[:150]}")


if __name__ == "__main__":
    main()
