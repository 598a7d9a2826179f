"""``explain/explain.json``: which parts of the job are finished (what a rerun may skip)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from cytotune.engine.io import atomic_write_text

from .layout import STATE_FILE, explain_dir


class ExplainState:
    """Finished parts keyed by name (``maps/<trial>/<method>``, ``population/<trial>``, ...).

    A part is finished when its outputs were moved into place *and* it was recorded here with
    the key of the settings that produced it; a part recorded with another key is recomputed.
    Stages running side by side share one state: every change and save holds its lock.
    """

    def __init__(self, study_dir: str | Path) -> None:
        self.path = explain_dir(study_dir) / STATE_FILE
        self._lock = threading.RLock()
        self.data: dict[str, Any] = {"parts": {}, "failures": {}, "timings": {}}
        # set once the maps stage's first batch is back or the stage ended (or when no maps
        # stage runs): with CYTOTUNE_SIDE_WAIT=1 the side stages' processes start their GPU
        # work after it (:func:`~cytotune.explainers.job.processes.side_work_waits`)
        self.maps_warm = threading.Event()
        # this job's maps run (its staging directories), once the maps stage has one; the
        # population stage reads the map parts there as they are written
        self.maps_run_id: str | None = None
        if self.path.is_file():
            try:
                self.data = {**self.data, **json.loads(self.path.read_text())}
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"{self.path} is corrupt ({exc}); rerun with --overwrite to recompute everything"
                ) from None

    def done(self, part: str, key: str) -> bool:
        return self.data["parts"].get(part, {}).get("key") == key

    def finish(self, part: str, key: str, **info: Any) -> None:
        with self._lock:
            self.data["parts"][part] = {"key": key, "finished": time.time(), **info}
            self.save()

    def fail(self, part: str, reason: str) -> None:
        with self._lock:
            self.data["failures"][part] = reason
            self.save()

    def clear_failure(self, part: str) -> None:
        with self._lock:
            if self.data["failures"].pop(part, None) is not None:
                self.save()

    def time(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.data["timings"][stage] = round(seconds, 3)
            self.save()

    def mark(self, name: str) -> None:
        """When a step inside a stage ended (``marks``: where the job's tail spends its time;
        the benchmark reads them against ``maps_run.started``)."""
        with self._lock:
            self.data.setdefault("marks", {})[name] = time.time()
            self.save()

    def update(self, **fields: Any) -> None:
        with self._lock:
            self.data.update(fields)
            self.save()

    def save(self) -> None:
        with self._lock:
            text = json.dumps(self.data, indent=2, default=str)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, text)
