"""Tune callbacks on the driver: the results store writer and the compact live table."""

from __future__ import annotations

import json
import math
import re
import sys
import time

from ray.tune import Callback
from ray.tune.stopper import Stopper

from .store import StudyStore
from .study import StudyConfig

_FOLD_KEY = re.compile(r"^fold(\d+)/(.+)$")


def flatten_params(sample: dict) -> dict:
    """{"family": f, f: {...}, "train": {...}} -> {"family": f, "f.key": v, "train.key": v}."""
    out = {"family": sample.get("family")}
    for group, values in sample.items():
        if isinstance(values, dict):
            out.update({f"{group}.{k}": v for k, v in values.items()})
    return out


def key_params(sample: dict, limit: int = 4) -> str:
    """A short human summary of the parameters that matter most."""
    family = sample.get("family", "?")
    values = dict(sample.get(family, {}))
    train = sample.get("train", {})
    shown = [(k, v) for k, v in values.items() if not isinstance(v, dict)]
    parts = [f"{v}" if k == "backbone" else f"{k}={_short(v)}" for k, v in shown][: limit - 1]
    if "lr" in train:
        parts.append(f"lr={train['lr']:.1e}")
    return " ".join(parts)


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return "x".join(map(str, value)) or "-"
    return str(value)


class StoreCallback(Callback):
    """Writes trials, folds and learning curves to the study store as results arrive."""

    def __init__(self, store: StudyStore, study: StudyConfig, flush_every_s: float = 2.0) -> None:
        self.store, self.study, self.flush_every_s = store, study, flush_every_s
        self._last_flush = 0.0
        self._nodes: dict[str, str] = {}  # Tune actor id -> Ray node id

    def __getstate__(self) -> dict:  # Tune pickles callbacks with the experiment
        return {
            "store": StudyStore(self.store.uri),
            "study": self.study,
            "flush_every_s": self.flush_every_s,
            "_last_flush": 0.0,
            "_nodes": {},
        }

    def _flush(self, force: bool = False) -> None:
        if force or time.time() - self._last_flush > self.flush_every_s:
            self.store.flush()
            self._last_flush = time.time()

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        existing = {r["trial_id"]: r for r in self.store.rows("trials")}
        row = existing.get(trial.trial_id, {})
        if row.get("status") in ("completed", "pruned"):
            return  # restored after a driver restart from its final checkpoint: nothing re-runs
        self.store.upsert(
            "trials",
            (trial.trial_id,),
            {
                "trial_id": trial.trial_id,
                "number": row.get("number", len(existing)),
                "status": "running",
                "family": trial.config.get("family"),
                "params": json.dumps(trial.config, default=str),
                "started_at": row.get("started_at", time.time()),
                **{
                    f"param.{k}": json.dumps(v) if isinstance(v, (list, dict)) else v
                    for k, v in flatten_params(trial.config).items()
                    if k != "family"
                },
            },
        )
        self._flush(force=True)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        epoch = int(result["epoch"])
        means = {k: v for k, v in result.items() if k.startswith("val/")}
        self.store.upsert(
            "trials",
            (trial.trial_id,),
            {
                **self._node_fields(trial, result),
                "epochs_done": epoch,
                "folds_done": int(result.get("folds_done", self.study.folds.k)),
                "train_loss": result.get("train_loss"),
                "images_per_s": result.get("images_per_s"),
                **means,
                **{k: v for k, v in result.items() if k.startswith("time/")},
            },
        )
        if "fold_curve" in result:
            self._record_fold_curve(trial.trial_id, int(result["fold"]), result["fold_curve"])
            self._flush()
            return
        folds: dict[int, dict] = {}
        for key, value in result.items():
            match = _FOLD_KEY.match(key)
            if match:
                folds.setdefault(int(match.group(1)), {})[match.group(2)] = value
        for fold, values in folds.items():
            self.store.upsert(
                "epochs",
                (trial.trial_id, epoch, fold),
                {"trial_id": trial.trial_id, "epoch": epoch, "fold": fold, **values},
            )
        self.store.upsert(
            "epochs",
            (trial.trial_id, epoch, -1),
            {
                "trial_id": trial.trial_id,
                "epoch": epoch,
                "fold": -1,
                **{k[4:]: v for k, v in means.items()},
                **{k: result.get(k) for k in ("train_loss", "images_per_s", "epoch_seconds")},
            },
        )
        self._flush()

    def _node_fields(self, trial, result: dict) -> dict:
        """``node_id``: the Ray node the trial reported from; ``nodes``: every node it ran on,
        in order (a trial retried after its node was lost shows both)."""
        node = result.get("node_id") or self._actor_node(trial)
        if not node:
            return {}
        row = next((r for r in self.store.rows("trials") if r["trial_id"] == trial.trial_id), {})
        seen = [n for n in str(row.get("nodes") or "").split(",") if n]
        if not seen or seen[-1] != node:
            seen.append(node)
        return {"node_id": node, "nodes": ",".join(seen)}

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

    def _record_fold_curve(self, trial_id: str, fold: int, curve: list[dict]) -> None:
        """A finished fold's learning curve (race: folds), then the fold-mean curve over the
        folds done so far (fold -1)."""
        for point in curve:
            epoch = int(point["epoch"])
            self.store.upsert(
                "epochs",
                (trial_id, epoch, fold),
                {"trial_id": trial_id, "fold": fold, **point, "epoch": epoch},
            )
        by_epoch: dict[int, list[dict]] = {}
        for row in self.store.rows("epochs"):
            if row.get("trial_id") == trial_id and int(row.get("fold", -1)) >= 0:
                by_epoch.setdefault(int(row["epoch"]), []).append(row)
        for epoch, rows in by_epoch.items():
            keys = {k for r in rows for k, v in r.items() if isinstance(v, (int, float))}
            keys -= {"epoch", "fold"}
            mean = {}
            for key in keys:
                values = [float(r[key]) for r in rows if _finite(r.get(key))]
                if values:
                    mean[key] = sum(values) / len(values)
            self.store.upsert(
                "epochs",
                (trial_id, epoch, -1),
                {"trial_id": trial_id, "epoch": epoch, "fold": -1, **mean, "n_folds": len(rows)},
            )

    def _finished(self, row: dict, last: dict) -> bool:
        """Scored at full fidelity: every fold (race: folds) or every epoch (race: epochs)."""
        if self.study.budget.race == "folds":
            done = max(_count(row.get("folds_done")), _count(last.get("folds_done")))
            return done >= self.study.folds.k
        return max(_count(row.get("epochs_done")), _count(last.get("epoch"))) >= (
            self.study.budget.max_epochs
        )

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        done = self.store.rows("trials")
        row = next((r for r in done if r["trial_id"] == trial.trial_id), {})
        if row.get("status") in ("completed", "pruned"):
            return  # already recorded before a driver restart; Tune only re-confirms it
        update = {"ended_at": time.time()}
        epochs = _count(row.get("epochs_done"))
        last = dict(trial.last_result or {})
        if _count(last.get("epoch")) > epochs:
            # a driver killed before the store's last flush: Tune's state knows more results
            # than the store; take the final ones from it
            epochs = _count(last["epoch"])
            update |= {
                "epochs_done": epochs,
                **{k: v for k, v in last.items() if k.startswith("val/")},
            }
        if _count(last.get("folds_done")) > _count(row.get("folds_done")):
            update["folds_done"] = _count(last["folds_done"])
        update["status"] = "completed" if self._finished(row, last) else "pruned"
        checkpoint = trial.checkpoint
        if checkpoint is not None:
            update["checkpoint"] = checkpoint.path
            self._record_folds(trial.trial_id, checkpoint)
        self.store.upsert("trials", (trial.trial_id,), update)
        self._flush(force=True)

    def _record_folds(self, trial_id: str, checkpoint) -> None:
        try:
            with checkpoint.filesystem.open_input_stream(
                f"{checkpoint.path}/metrics.json"
            ) as handle:
                details = json.loads(handle.read())
        except (FileNotFoundError, OSError):
            return
        for fold in details:
            row = {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in fold.items()}
            self.store.upsert("folds", (trial_id, int(fold["fold"])), {"trial_id": trial_id, **row})

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        row = next((r for r in self.store.rows("trials") if r["trial_id"] == trial.trial_id), {})
        retries = int(row.get("retries") or 0) + 1
        self.store.upsert(
            "trials", (trial.trial_id,), {"retries": retries, "last_error": _error_text(trial)}
        )
        self._flush(force=True)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.store.upsert(
            "trials",
            (trial.trial_id,),
            {"status": "failed", "ended_at": time.time(), "error": _error_text(trial)},
        )
        self._flush(force=True)

    def on_experiment_end(self, trials, **info) -> None:
        # trials the time budget (or a stopper) ended mid-run: "stopped", with their last
        # checkpoint, so they can be explained and pulled like the others
        rows = {r["trial_id"]: r for r in self.store.rows("trials")}
        for trial in trials:
            if rows.get(trial.trial_id, {}).get("status") != "running":
                continue
            update = {"status": "stopped", "ended_at": time.time()}
            if trial.checkpoint is not None:
                update["checkpoint"] = trial.checkpoint.path
                self._record_folds(trial.trial_id, trial.checkpoint)
            self.store.upsert("trials", (trial.trial_id,), update)
        self._flush(force=True)


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


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(float(value))


def _count(value) -> int:
    """An epoch count from a store cell or a result (None and NaN count as 0)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0
    return int(number) if math.isfinite(number) else 0
