"""Dashboard pages: each module has ``layout(ctx, study, params)``, ``register(app, ctx)`` and a
``PAGE`` that says how the app mounts it; the app finds every module declaring ``PAGE``, so a
new page is one file here (plus its test)."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Page:
    """How the app mounts a page module.

    Attributes:
        path: the URL's first segment (``/compare?study=...``).
        nav: its label in the navigation bar; None for pages reached by links only.
        order: its place in the navigation bar (smaller first).
        needs_study: False for pages drawn without a study (the study list).
        memo: drawn from the study's files alone, so the app memoises it on those files.
    """

    path: str
    nav: str | None = None
    order: int = 100
    needs_study: bool = True
    memo: bool = False


def discover(package: str = __name__) -> dict[str, ModuleType]:
    """``{path: module}`` of every module in ``package`` that declares ``PAGE``."""
    found: dict[str, ModuleType] = {}
    for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
        module = importlib.import_module(f"{package}.{info.name}")
        page = getattr(module, "PAGE", None)
        if not isinstance(page, Page):
            continue
        if page.path in found:
            raise ValueError(
                f"dashboard pages {found[page.path].__name__} and {module.__name__} both "
                f"declare path {page.path!r}; give one another path"
            )
        found[page.path] = module
    return found
