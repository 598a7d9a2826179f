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


def test_no_test_hooks_or_test_helpers_in_the_packages():
    """Fault injection lives in tests/engine/plugins (a plugin the test's study lists), the
    headless browser in tests/dashboard/browser.py, the map encoder of hand-built studies in
    tests/maps.py: nothing the installed trainable checks every epoch, nothing only tests import."""
    assert _grep(r"(?i)fail.?once|inject(ed)? failure|fault.injection") == []
    assert _grep(r"(?i)\bselenium\b|chromedriver|webdriver") == []
    assert _grep(r"\bdef encode_map\b") == []
    assert not (ROOT / "dashboard" / "browser.py").exists()


def test_the_cli_shows_a_traceback_for_bugs():
    """Only user-facing errors (cytotune's own, all ValueErrors, and missing or existing files)
    become one-line messages; tests/engine/test_cli.py runs it."""
    from cytotune.engine.cli import USER_ERRORS

    assert TypeError not in USER_ERRORS
    assert not any(issubclass(TypeError, e) for e in USER_ERRORS)
    assert not any(issubclass(AttributeError, e) for e in USER_ERRORS)


def test_every_register_function_uses_the_one_registry():
    """``register_*`` decorators sit on :class:`cytotune.registry.Registry`, not on a
    hand-rolled dict with its own lookup and error message."""
    modules = {hit.split(":")[0] for hit in _grep(r"^def register_\w+\(")}
    assert modules, "no register_* function found: update this test"
    for module in sorted(modules):
        assert "Registry(" in (ROOT / module).read_text(), module
    assert _grep(r"get_close_matches", skip=("cytotune/registry.py", "engine/metrics.py")) == []


# Files written while the chained asserts were split (issue 17); split them and drop them here.
NOT_YET_SPLIT: set[str] = set()


def test_no_assert_chains_clauses_with_and():
    """``assert a and b`` says only that the whole failed; two asserts say which clause did."""
    import ast

    chained = []
    for source in sorted((ROOT / "tests").rglob("*.py")):
        relative = source.relative_to(ROOT).as_posix()
        if relative in NOT_YET_SPLIT:
            continue
        for node in ast.walk(ast.parse(source.read_text())):
            test = getattr(node, "test", None) if isinstance(node, ast.Assert) else None
            if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
                chained.append(f"{relative}:{node.lineno}")
    assert chained == [], "split these into one assert per clause: " + ", ".join(chained)
