"""cytotune.lazy: package names that load on first use, checked in a fresh interpreter against
plain imports of the defining modules."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cytotune.lazy import lazy_exports

CODE = """
import sys
import {package} as pkg
before = set(sys.modules)
value = getattr(pkg, {name!r})
import importlib
defining = importlib.import_module({module!r})
assert value is getattr(defining, {name!r})
assert {module!r} not in before, "loaded before first use"
assert {name!r} in dir(pkg)
"""


@pytest.mark.parametrize(
    ("package", "name", "module"),
    [
        ("cytotune.engine.data", "CellDataset", "cytotune.engine.data.dataset"),
        ("cytotune.explainers.methods", "GradCAM", "cytotune.explainers.methods.cam"),
        ("cytotune.explainers.quality", "sanity_check", "cytotune.explainers.quality.sanity"),
    ],
)
def test_a_name_loads_its_module_on_first_use_only(package, name, module):
    code = CODE.format(package=package, name=name, module=module)
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)


def test_unknown_names_raise_attribute_error_naming_the_package():
    getattr_, dir_ = lazy_exports(__name__, {"json_dumps": "json"})
    with pytest.raises(AttributeError, match=rf"module '{__name__}' has no attribute 'nope'"):
        getattr_("nope")
    with pytest.raises(AttributeError):  # a name the module does not define
        getattr_("json_dumps")
    assert "json_dumps" in dir_()
