"""Tune callbacks on the driver: the results store writer and the compact live table."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ray.tune import Callback
from ray.tune.stopper import Stopper

from .recorder import StudyRecorder
from .store import StudyStore
from .study import StudyConfig
from .tables import key_params


class StoreCallback(Callback):
    """Writes trials, folds and learning curves to the study store as results arrive (through
    :class:`~cytotune.engine.search.recorder.StudyRecorder`, which tests drive without Ray)."""

    def __init__(self, store: StudyStore, study: StudyConfig, flush_every_s: float = 2.0) -> None:
        self.store, self.study, self.flush_every_s = store, study, flush_every_s
        self.recorder = StudyRecorder.for_study(store, study, flush_every_s)
        self._nodes: dict[str, str] = {}  # Tune actor id -> Ray node id

    def __getstate__(self) -> dict:  # Tune pickles callbacks with the experiment
        return {"uri": self.store.uri, "study": self.study, "flush_every_s": self.flush_every_s}

    def __setstate__(self, state: dict) -> None:
        self.__init__(StudyStore(state["uri"]), state["study"], state["flush_every_s"])

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.recorder.started(trial.trial_id, trial.config)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        node = result.get("node_id") or self._actor_node(trial)
        self.recorder.reported(trial.trial_id, result, node=node)

    def _actor_node(self, trial) -> str | None:
        """The node of the trial's Tune actor, from Ray's actor table (cached per actor)."""
        actor = getattr(getattr(trial, "temporary_state", None), "ray_actor", None)
        if actor is None:
            return None
        actor_id = actor._actor_id.hex()
        if actor_id not in self._nodes:
            try:
                import ray._private.state

                info = ray._private.state.actors(actor_id) or {}
            except Exception:  # noqa: BLE001 - no actor table (not connected): no node column
                return None
            node = (info.get("Address") or {}).get("NodeID")
            if not node:
                return None
            self._nodes[actor_id] = node
        return self._nodes[actor_id]

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        if self.recorder.is_final(trial.trial_id):
            return  # already recorded before a driver restart; Tune only re-confirms it
        checkpoint = trial.checkpoint
        self.recorder.backfill(
            trial.trial_id, _logged_results(trial) + _checkpoint_reports(checkpoint)
        )
        self.recorder.completed(
            trial.trial_id,
            last_result=trial.last_result,
            checkpoint=None if checkpoint is None else checkpoint.path,
            fold_details=None if checkpoint is None else _fold_details(checkpoint),
        )

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self.recorder.recovered(trial.trial_id, _error_text(trial))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.recorder.failed(trial.trial_id, _error_text(trial))

    def on_experiment_end(self, trials, **info) -> None:
        # trials the time budget (or a stopper) ended mid-run: "stopped", with their last
        # checkpoint, so they can be explained and pulled like the others
        for trial in trials:
            row = self.store.trial(trial.trial_id)
            if row is None or row.status != "running":
                continue
            checkpoint = trial.checkpoint
            self.recorder.backfill(
                trial.trial_id, _logged_results(trial) + _checkpoint_reports(checkpoint)
            )
            self.recorder.stopped(
                trial.trial_id,
                checkpoint=None if checkpoint is None else checkpoint.path,
                fold_details=None if checkpoint is None else _fold_details(checkpoint),
            )
        self.recorder.flush(force=True)


def _logged_results(trial) -> list[dict]:
    """The trial's reports as Tune's JSON logger wrote them: ``result.json`` in its directory
    on this driver (each line flushed as it came) and, where the storage is a local path, in
    the study's copy (synced with each experiment checkpoint, restored on ``--resume``); []
    where there is none."""
    results = []
    for directory in dict.fromkeys(
        str(getattr(trial, name, None) or "") for name in ("local_path", "path")
    ):
        path = Path(directory) / "result.json"
        try:
            lines = path.read_text().splitlines() if directory and path.is_file() else []
        except OSError:
            continue
        for line in lines:
            try:
                results.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by the kill
    return results


def _fold_details(checkpoint) -> list[dict]:
    """The per-fold metrics a checkpoint holds (its metrics.json; [] when absent)."""
    return _checkpoint_json(checkpoint, "metrics.json") or []


def _checkpoint_reports(checkpoint) -> list[dict]:
    """Every report of the trial up to its checkpoint (``reports`` in its cv.json). They
    outlive a killed driver: Tune's ``result.json`` copy in the study is only synced now and
    then, so the reports between a sync and the kill are in neither it nor the store."""
    state = _checkpoint_json(checkpoint, "cv.json") if checkpoint is not None else None
    return list((state or {}).get("reports") or [])


def _checkpoint_json(checkpoint, name: str):
    """A JSON file of a checkpoint; None when absent or unreadable."""
    try:
        with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{name}") as handle:
            return json.loads(handle.read())
    except (FileNotFoundError, OSError, ValueError):
        return None


class FailFast(Callback):
    """Notices when the first ``limit`` trials all fail before any trial reports an epoch (an
    unreadable dataset, a model that cannot be built, no memory): the study then stops with that
    error once instead of failing every remaining trial the same way."""

    def __init__(self, limit: int = 3) -> None:
        self.limit = limit
        self.errors: list[str] = []
        self.reported = False

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.reported = True

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.errors.append(_error_text(trial))

    @property
    def triggered(self) -> bool:
        return not self.reported and len(self.errors) >= self.limit


class FailFastStopper(Stopper):
    """Tune stopper that ends the whole experiment once :class:`FailFast` has triggered."""

    def __init__(self, watch: FailFast) -> None:
        self.watch = watch

    def __call__(self, trial_id, result) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.watch.triggered


def _error_text(trial) -> str:
    path = getattr(trial, "error_file", None) or ""
    try:
        from pathlib import Path

        text = Path(path).read_text() if path else ""
    except OSError:
        text = ""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else "trial failed (see the Ray logs)"


class LiveTable(Callback):
    """A compact progress table instead of Ray's log stream; one line per event off a terminal."""

    def __init__(self, study: StudyConfig, stream=None, refresh_s: float = 1.0) -> None:
        self.study, self.stream, self.refresh_s = study, stream or sys.stdout, refresh_s
        self.objective = study.objectives[0]
        self.rows: dict[str, dict] = {}
        self._drawn, self._last = 0, 0.0
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "stream": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.stream = sys.stdout

    def _better(self, a, b) -> bool:
        return b is None or (a is not None and (a > b if self.objective.mode == "max" else a < b))

    def _best(self):
        best = None
        for row in self.rows.values():
            if self._better(row.get("value"), best):
                best = row.get("value")
        return best

    def _event(self, trial, status: str, result: dict | None = None) -> None:
        row = self.rows.setdefault(
            trial.trial_id,
            {
                "n": len(self.rows) + 1,
                "family": trial.config.get("family", "?"),
                "params": key_params(trial.config),
            },
        )
        row["status"] = status
        if result is not None:
            row["epoch"] = int(result["epoch"])
            row["folds"] = int(result.get("folds_done", self.study.folds.k))
            row["value"] = result.get(self.objective.key)
            row["std"] = result.get(f"{self.objective.key}_std")
        if self.tty:
            self._redraw()
        elif status != "running" or result is None or self._fold_finished(row, result):
            self.stream.write(self._line(row) + "\n")
            self.stream.flush()

    def _fold_finished(self, row: dict, result: dict) -> bool:
        """Off a terminal, a running trial gets a line per finished fold (race: folds)."""
        return self.study.budget.race == "folds" and "fold_curve" in result

    def _line(self, row: dict) -> str:
        value = row.get("value")
        metric = "      -      " if value is None else f"{value:.4f} ± {row.get('std') or 0:.3f}"
        best = self._best()
        k = self.study.folds.k
        if self.study.budget.race == "folds":
            folds = f"{row.get('folds', 0)}/{k} folds"
            pending = "no score yet (first one after a trial's first fold)"
        else:
            folds = f"{row.get('epoch', 0)}/{self.study.budget.max_epochs} x{k}f"
            pending = "no score yet (first one after a trial's first epoch)"
        best_text = pending if best is None else f"best {best:.4f}"
        params = _fit(row["params"], 40)
        return f"{row['n']:>5}  {row['family'][:18]:<18} {params:<40} {folds:>10}  {metric}  {row['status']:<9} {best_text}"

    def _header(self) -> str:
        progress = "folds" if self.study.budget.race == "folds" else "epoch x K"
        return f"trial  {'family':<18} {'key parameters':<40} {progress:>10}  {self.objective.metric:<13}  status"

    def _redraw(self, force: bool = False) -> None:
        if not force and time.time() - self._last < self.refresh_s:
            return
        lines = [self._header()] + [
            self._line(r) for r in sorted(self.rows.values(), key=lambda r: r["n"])
        ][-30:]
        if self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()
        self._drawn, self._last = len(lines), time.time()

    def setup(self, total_num_samples: int | None = None, **info) -> None:
        trials = f"{total_num_samples} trials" if (total_num_samples or 0) > 0 else "trials"
        self.stream.write(
            f"launching {trials} ({self.study.resources.cpus:g} CPU, "
            f"{self.study.resources.gpus:g} GPU each); a trial starts with its Ray worker "
            "(Python, torch), so the first rows take a few seconds\n"
        )
        self.stream.write(self._header() + "\n" if not self.tty else "")
        self.stream.flush()

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._event(trial, "running")

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._event(trial, "running", result)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        row = self.rows.get(trial.trial_id, {})
        if self.study.budget.race == "folds":
            done = row.get("folds", 0) >= self.study.folds.k
        else:
            done = row.get("epoch", 0) >= self.study.budget.max_epochs
        self._event(trial, "done" if done else "pruned")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._event(trial, "failed")

    def on_experiment_end(self, trials, **info) -> None:
        if self.tty:
            self._redraw(force=True)


def _fit(text: str, width: int) -> str:
    """``text`` cut at a word boundary to ``width`` characters, marked with an ellipsis."""
    if len(text) <= width:
        return text
    cut = text[: width - 1].rsplit(" ", 1)[0] if " " in text[: width - 1] else text[: width - 1]
    return cut + "…"
