"""Synthetic fluorescence cells with ground truth: the embedded default data of cytotune.

``render(task, n)`` returns a :class:`SynthBatch` in memory; ``write_dataset(task, out, n)``
streams the same cells into a dataset; ``list_tasks()`` names the registered tasks.
"""

from __future__ import annotations

from cytotune.lazy import lazy_exports

from . import metastasis as _metastasis  # noqa: F401  (registers the task)
from . import microtubule as _microtubule  # noqa: F401
from .montage import montage  # eager: the function shadows its submodule of the same name
from .tasks import SynthOptions, SynthTask, get_task, list_tasks, register_task

# Imported on first use: rendering and writing need scipy and pyarrow, `--help` does not.
_LAZY = {"SynthBatch": ".generate", "render": ".generate", "write_dataset": ".generate"}

__all__ = [
    "SynthBatch",
    "SynthOptions",
    "SynthTask",
    "get_task",
    "list_tasks",
    "montage",
    "register_task",
    "render",
    "write_dataset",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
