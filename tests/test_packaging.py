"""The ``cytotune.*`` namespace: pyproject lists every subpackage, a built wheel holds the code
under ``cytotune/``, and no code imports the folders by their bare names."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("engine", "dashboard", "explainers", "search_spaces")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _folder_packages() -> set[str]:
    found = {"cytotune"}
    for top in FOLDERS:
        for init in (ROOT / top).rglob("__init__.py"):
            found.add("cytotune." + ".".join(init.parent.relative_to(ROOT).parts))
    return found


def test_pyproject_lists_every_subpackage():
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    assert listed == _folder_packages(), "add the new package to pyproject's packages list"


def test_package_dir_maps_each_folder():
    mapping = _pyproject()["tool"]["setuptools"]["package-dir"]
    assert mapping == {"cytotune": "cytotune", **{f"cytotune.{f}": f for f in FOLDERS}}


_BARE = re.compile(rf"(?<![\w.])(from|import) ({'|'.join(FOLDERS)})(?=[\s.,;])")
_DOTTED = re.compile(rf"(?<![\w.])['\"]({'|'.join(FOLDERS)})\.\w")


def test_no_code_imports_a_bare_folder_name():
    offenders = []
    roots = [ROOT / d for d in (*FOLDERS, "cytotune", "tests", "bench", ".ci")]
    paths = [p for r in roots for pattern in ("*.py", "*.sh") for p in r.rglob(pattern)]
    for path in paths:
        text = path.read_text(errors="replace")
        for pattern in (_BARE, _DOTTED):
            for match in pattern.finditer(text):
                if not text[: match.start()].endswith("from cytotune "):
                    offenders.append(f"{path.relative_to(ROOT)}: {match.group(0).strip()}")
    assert not offenders, offenders


@pytest.mark.slow
def test_the_wheel_installs_everything_under_cytotune(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    (wheel,) = tmp_path.glob("cytotune-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("cytotune-")}
    assert tops == {"cytotune"}, tops
    for needed in (
        "cytotune/engine/cli.py",
        "cytotune/search_spaces/default.yaml",
        "cytotune/search_spaces/models/families/protopnet.py",
        "cytotune/dashboard/pages/__init__.py",
    ):
        assert needed in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "cytotune = cytotune.engine.cli:entry" in zipfile.ZipFile(wheel).read(entry).decode()
