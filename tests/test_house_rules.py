"""House rules checked on the source: each fails if a removed hand-rolled helper or a test hook
comes back into the installed packages."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cytotune", "engine", "explainers", "dashboard", "search_spaces")


def _grep(pattern: str, skip: tuple[str, ...] = ()) -> list[str]:
    """``path:line: text`` of every package source line matching ``pattern``."""
    regex, hits = re.compile(pattern), []
    for package in PACKAGES:
        for source in sorted((ROOT / package).rglob("*.py")):
            relative = source.relative_to(ROOT).as_posix()
            if relative in skip:
                continue
            for number, line in enumerate(source.read_text().splitlines(), 1):
                if regex.search(line):
                    hits.append(f"{relative}:{number}: {line.strip()}")
    return hits


def test_no_hand_written_file_locks():
    """Inter-process locks come from ``filelock`` (see engine/export/aliases.py)."""
    assert _grep(r"\bfcntl\b|\bflock\(") == []
