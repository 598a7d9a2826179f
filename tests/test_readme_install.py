"""README install notes: the CPU build of torch for machines without a GPU."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
CPU_INDEX = "--index-url https://download.pytorch.org/whl/cpu"


def test_readme_says_how_to_get_the_cpu_build_of_torch():
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    assert blocks[0].strip().startswith("python3 -m venv .venv"), "the opening commands come first"
    lines = next((b.splitlines() for b in blocks if CPU_INDEX in b), None)
    assert lines, f"no bash block installs torch with {CPU_INDEX}"
    cpu = next(i for i, line in enumerate(lines) if CPU_INDEX in line)
    editable = next(i for i, line in enumerate(lines) if "pip install -e ." in line)
    assert "pip install torch torchvision" in lines[cpu]
    assert cpu < editable
