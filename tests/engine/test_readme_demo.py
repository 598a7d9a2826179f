"""The README's first command, its ``cytotune`` part verbatim, from a fresh directory."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_demo_command() -> str:
    """The ``cytotune ...`` part of the first bash block of the README."""
    block = re.search(r"```bash\n(.*?)```", README.read_text(), re.S)
    assert block, "README has no bash block"
    first = block.group(1).strip().splitlines()[0]
    part = first.split("&&")[-1].strip()
    assert part.startswith("cytotune demo"), f"README's first command ends with {part!r}"
    return part


@pytest.mark.slow
def test_readme_first_command_runs_verbatim_with_a_relative_out(tmp_path):
    command = readme_demo_command()
    assert "--out runs/" in command, "the test is about the README's relative --out"
    exe = shutil.which("cytotune") or str(Path(sys.executable).with_name("cytotune"))
    env = {**os.environ, "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    proc = subprocess.run(
        command.replace("cytotune", exe, 1),
        shell=True,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    study = tmp_path / "runs" / "demo" / "studies" / "demo"
    assert (study / "trials.parquet").is_file(), output[-2000:]
    assert "demo finished" in proc.stdout
    assert "Traceback" not in output, output[-4000:]
