"""Plugins: the user's own modules that register model families (or explainers) on import.

A family records the plugin that registered it (``ModelConfig.plugin``, so in each
checkpoint's ``config.json``), and rebuilding the model imports it again wherever the family is
not registered yet: explain workers, ``cytotune pull``, a notebook.

A study file lists them under ``plugins:``, each an importable module name (``mylab.models``,
installed or on ``PYTHONPATH`` of every node) or a path to a ``.py`` file. The search driver
imports them before it reads the search space, and every Ray trial imports them before it
builds a model; a file's source travels with the trial, so it need not exist on the workers.

>>> import_plugins(["/home/me/my_family.py"])  # registers whatever the file registers
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType

__all__ = ["import_plugins", "is_plugin_file", "plugin_module_name", "plugin_sources"]


def is_plugin_file(plugin: str) -> bool:
    """A plugin given as a file path (ends in ``.py`` or names a path), not a module name."""
    return plugin.endswith(".py") or "/" in plugin or "\\" in plugin


def plugin_module_name(path: str) -> str:
    """The ``sys.modules`` name a plugin file is imported under: stable for one absolute path,
    so the driver and the workers agree and importing twice is a no-op."""
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    stem = "".join(c if c.isalnum() else "_" for c in Path(path).stem)
    return f"cytotune_plugin_{stem}_{digest}"


def plugin_sources(plugins: Iterable[str]) -> dict[str, str]:
    """``{path: source}`` of the plugin files, read here (the driver) to ship to the workers."""
    return {p: Path(p).read_text() for p in plugins if is_plugin_file(p)}


def import_plugins(
    plugins: Iterable[str], sources: Mapping[str, str] | None = None
) -> list[ModuleType]:
    """Import each plugin once (again: no-op) and return the modules.

    Args:
        plugins: module names or ``.py`` file paths (absolute, or relative to the working
            directory).
        sources: ``{path: source}`` for files that may be absent here (a Ray worker on another
            node); a file present on disk is read from disk.

    Raises:
        ImportError: a module that cannot be imported or a file that is neither on disk nor
            in ``sources``, naming the plugin and the fix.
    """
    return [_import_one(p, sources or {}) for p in plugins]


def _import_one(plugin: str, sources: Mapping[str, str]) -> ModuleType:
    from .registry import LOADING_PLUGINS

    LOADING_PLUGINS.append(plugin)  # families registered now record where they came from
    try:
        return _load(plugin, sources)
    finally:
        LOADING_PLUGINS.pop()


def _load(plugin: str, sources: Mapping[str, str]) -> ModuleType:
    if not is_plugin_file(plugin):
        try:
            return importlib.import_module(plugin)
        except ImportError as exc:
            raise ImportError(
                f"plugin {plugin!r} cannot be imported ({exc}); install it on every node, or "
                "give the path of its .py file instead"
            ) from exc
    name = plugin_module_name(plugin)
    if name in sys.modules:
        return sys.modules[name]
    path = Path(plugin)
    if path.is_file():
        source = path.read_text()
    elif plugin in sources:
        source = sources[plugin]
    else:
        raise ImportError(f"plugin file {plugin} not found; give an existing .py file")
    spec = importlib.util.spec_from_loader(name, loader=None, origin=str(path))
    module = importlib.util.module_from_spec(spec)
    module.__file__ = str(path)
    sys.modules[name] = module  # before running it: dataclasses and pickling look it up
    try:
        exec(compile(source, str(path), "exec"), module.__dict__)
    except BaseException:
        del sys.modules[name]
        raise
    return module
