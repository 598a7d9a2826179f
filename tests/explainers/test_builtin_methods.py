"""The built-in attribution methods are listed from the package's sources, without importing
them: the list must equal what importing every method module registers, module by module."""

from __future__ import annotations

import importlib
import pkgutil

import cytotune.explainers.methods as methods
from cytotune.explainers.job.config import BUILTIN_METHODS
from cytotune.explainers.methods._registry import _DECORATOR, EXPLAINERS, _builtin_modules


def test_the_source_scan_equals_what_the_modules_register():
    registered = {}
    for info in pkgutil.iter_modules(methods.__path__):
        module = importlib.import_module(f"{methods.__name__}.{info.name}")
        for name in EXPLAINERS.list():
            cls = EXPLAINERS.get(name)
            if cls.__module__ == module.__name__:
                registered[name] = module.__name__
    assert _builtin_modules() == registered
    assert set(BUILTIN_METHODS) == set(registered)  # what `cytotune explain --help` names
    assert len(registered) >= 8


def test_the_decorator_pattern_reads_quotes_and_skips_other_text():
    source = "\n".join(
        [
            '@register_explainer("deeplift")',
            "@register_explainer( 'lrp' )",
            '    @register_explainer("nested")  # indented: not a module-level class',
            '# @register_explainer("commented")',
            'register_explainer("called")',
        ]
    )
    assert _DECORATOR.findall(source) == ["deeplift", "lrp"]
