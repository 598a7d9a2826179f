"""Where a command's wall time goes: run it, stamp every output line with the seconds since
start, and list the slowest imports of the process (``python -X importtime``).

    python bench/timeline.py -- cytotune search --config study.yaml
    python bench/timeline.py --imports search_spaces,engine.search.runner

Used to find the fixed cost of ``cytotune search`` before the first trial trains (issue 13).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time


def stamp(command: list[str]) -> int:
    """Run ``command``, printing each output line prefixed with its arrival time."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ
    )
    for line in proc.stdout:
        print(f"{time.perf_counter() - start:7.2f}s  {line.rstrip()[:160]}", flush=True)
    proc.wait()
    print(f"{time.perf_counter() - start:7.2f}s  exit {proc.returncode}", flush=True)
    return proc.returncode


def slowest_imports(modules: str, top: int) -> None:
    """The ``top`` slowest cumulative imports of ``import modules`` in a fresh interpreter."""
    code = "; ".join(f"import {m}" for m in modules.split(","))
    start = time.perf_counter()
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True
    ).stderr
    wall = time.perf_counter() - start
    rows = []
    for line in err.splitlines():
        parts = line.split("|")
        if line.startswith("import time:") and parts[1].strip().isdigit():
            rows.append((int(parts[1]) / 1e6, parts[2].rstrip()))
    print(f"import {modules}: {wall:.2f} s wall")
    for seconds, name in sorted(rows, reverse=True)[:top]:
        print(f"  {seconds:6.2f} s {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--imports", help="comma-separated modules to time the import of")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.imports:
        slowest_imports(args.imports, args.top)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if command:
        sys.exit(stamp(command))


if __name__ == "__main__":
    main()
