"""Package exports that load on first use (PEP 562): importing a package stays cheap (no torch
for ``--help`` or the dashboard) while its public names stay where users import them from.

>>> __getattr__, __dir__ = lazy_exports(__name__, {"CellDataset": ".dataset"})
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A module-level ``__getattr__`` and ``__dir__`` for ``package``; ``exports`` maps each
    public name to the module (absolute, or relative to ``package``) that defines it."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
