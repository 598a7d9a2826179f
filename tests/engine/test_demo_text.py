"""``cytotune demo --help`` and the README promise the same duration."""

from __future__ import annotations

import re
from pathlib import Path

from cytotune.engine import demo

README = Path(__file__).resolve().parents[2] / "README.md"
DURATION = re.compile(r"about (\w+(?:-\w+)?) minutes? on 2 CPU cores")


def test_demo_help_and_readme_agree_on_the_duration():
    readme = DURATION.findall(" ".join(README.read_text().split()))
    help_text = DURATION.findall(" ".join(demo.__doc__.split()))
    assert help_text, "cytotune demo --help names no duration on 2 CPU cores"
    assert readme == help_text, f"README says {readme}, the demo's help {help_text}"
