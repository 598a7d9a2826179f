"""Page views memoised on the files they are drawn from.

Every page and on-load callback of the dashboard is a pure function of the study's files and
the request's arguments. Under load the same views are asked for again and again (several people
on one study, each refresh), and drawing one costs 10-150 ms of pandas and component building
on a small CPU; serving it from memory costs a few ``stat`` calls. A view is drawn again as soon
as any file it reads changes (modification time or size), so a running search still shows up
live, and at most ``MAX_VIEWS`` views are kept (least recently used dropped first).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from .data import _signature

MAX_VIEWS = 512
EXPLAIN_FILES = (
    "explain/explain.json",
    "explain/quality.parquet",
    "explain/population.parquet",
    "explain/layers.json",
    "explain/prototypes.parquet",
    "explain/attention.parquet",
    "explain/maps",
)

_VIEWS: OrderedDict[tuple, tuple] = OrderedDict()
_LOCK = threading.Lock()
stats = {"hits": 0, "draws": 0}


def files_of(study, trial_id: str | None = None) -> tuple[Path, ...]:
    """The files a study's pages read: its tables, study.json/yaml, the dataset manifest and the
    explain job's outputs (with the trial's map folder when ``trial_id`` is given)."""
    names = (
        "study.json",
        "study.yaml",
        "trials.parquet",
        "folds.parquet",
        "epochs.parquet",
        *EXPLAIN_FILES,
    )
    files = [study.path / n for n in names]
    dataset = study.dataset_path()
    if dataset is not None:
        files.append(dataset / "manifest.json")
    if trial_id:
        files.append(study.path / "explain" / "maps" / str(trial_id))
    return tuple(files)


def view(study, name: str, args: tuple, draw, trial_id: str | None = None):
    """``draw()`` for (study, ``name``, ``args``), drawn once per version of the study's files.

    ``args`` must hold everything besides the files that the view depends on (hashable)."""
    return files_view(files_of(study, trial_id), name, (str(study.path), args), draw)


def files_view(files: tuple[Path, ...], name: str, args: tuple, draw):
    """``draw()`` once per version of ``files`` (and per ``name``, ``args``)."""
    signature = tuple(_signature(f) for f in files)
    key = (name, args)
    with _LOCK:
        hit = _VIEWS.get(key)
        if hit is not None and hit[0] == signature:
            _VIEWS.move_to_end(key)
            stats["hits"] += 1
            return hit[1]
    value = draw()
    with _LOCK:
        stats["draws"] += 1
        _VIEWS[key] = (signature, value)
        _VIEWS.move_to_end(key)
        while len(_VIEWS) > MAX_VIEWS:
            _VIEWS.popitem(last=False)
    return value


def freeze(value):
    """A hashable form of callback arguments (lists and dicts from the browser)."""
    if isinstance(value, dict):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value
