"""Synthetic fluorescence cells with ground truth: the embedded default data of cytotune.

``render(task, n)`` returns a :class:`SynthBatch` in memory; ``write_dataset(task, out, n)``
streams the same cells into a dataset; ``list_tasks()`` names the registered tasks.
"""

from . import metastasis as _metastasis  # noqa: F401  (registers the task)
from . import microtubule as _microtubule  # noqa: F401
from .generate import SynthBatch, render, write_dataset
from .montage import montage
from .tasks import SynthOptions, SynthTask, get_task, list_tasks, register_task

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
