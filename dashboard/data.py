"""Read side of the results store for the dashboard: studies under a root, cached tables.

Nothing here writes. Every table is read through :class:`cytotune.engine.search.store.StudyStore` and
cached by the file's modification time and size, so a page refresh while a search is running
picks up the new rows and an idle dashboard re-reads nothing.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml
from cytotune.engine.search.store import StudyStore
from cytotune.engine.search.tables import FormatError, key_params, sample_of

# Metrics that are counts or bookkeeping, not scores: never shown as leaderboard columns.
NOT_SCORES = {"n", "n_val", "auc_classes_present", "well/n", "well/auc_classes_present"}
# Leaderboard order of the metrics a person looks at first; the rest follow alphabetically.
METRIC_ORDER = (
    "balanced_accuracy", "accuracy", "f1_macro", "f1_weighted", "auc_macro", "log_loss",
    "precision_macro", "recall_macro", "f1_micro", "auc_micro", "auc_weighted",
    "precision_weighted", "recall_weighted", "val_loss", "train_loss",
)  # fmt: skip
STATUSES = ("completed", "running", "stopped", "pruned", "failed", "error")


class StudyUnreadable(ValueError):
    """A study directory the dashboard cannot show, with what is wrong and how to fix it."""


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size)


class _FileCache:
    """Values computed from one file, recomputed only when the file changes."""

    def __init__(self) -> None:
        self._values: dict[tuple, tuple] = {}
        self._lock = threading.Lock()

    def get(self, path: Path, key: str, compute):
        signature = _signature(path)
        with self._lock:
            hit = self._values.get((str(path), key))
        if hit is not None and hit[0] == signature:
            return hit[1]
        value = compute()
        with self._lock:
            self._values[(str(path), key)] = (signature, value)
        return value


CACHE = _FileCache()


def is_study_dir(path: Path) -> bool:
    """A study directory holds study.json (or, when partial, study.yaml or trials.parquet)."""
    return any((path / name).is_file() for name in ("study.json", "study.yaml", "trials.parquet"))


def find_studies(root: str | Path, depth: int = 3) -> dict[str, Path]:
    """Study directories at or below ``root``, keyed by their path relative to ``root``.

    ``root`` may itself be a study (its key is its directory name) or a folder holding several
    (``runs/studies``), possibly nested a few levels.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise StudyUnreadable(
            f"{root} is not a directory; pass --study a study directory or a folder of studies"
        )
    if is_study_dir(root):
        return {root.name: root}
    found: dict[str, Path] = {}
    frontier = [root]
    for _ in range(depth):
        nxt = []
        for folder in frontier:
            try:
                children = sorted(p for p in folder.iterdir() if p.is_dir())
            except OSError:
                continue
            for child in children:
                if child.name in ("tune", "explain") or child.name.startswith("."):
                    continue
                if is_study_dir(child):
                    found[child.relative_to(root).as_posix()] = child
                else:
                    nxt.append(child)
        frontier = nxt
    return found


def metric_direction(metric: str) -> str:
    from cytotune.engine.metrics import metric_direction as direction

    try:
        return direction(metric)
    except ValueError:
        return "min" if "loss" in metric or metric.startswith(("mse", "mae")) else "max"


@dataclass
class Study:
    """One study directory, read only."""

    key: str
    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path).resolve()
        self.store = StudyStore(str(self.path))

    # -- metadata ----------------------------------------------------------------------------
    def status(self) -> dict:
        """study.json; raises StudyUnreadable with the fix when it is missing or broken."""
        target = self.path / "study.json"
        if not target.is_file():
            raise StudyUnreadable(
                f"{self.path} has no study.json: it is not a finished or running cytotune study "
                "(start one with `cytotune search --config study.yaml`)"
            )

        def load():
            try:
                return json.loads(target.read_text())
            except (OSError, ValueError) as exc:
                raise StudyUnreadable(f"{target} is not valid JSON ({exc})") from None

        return CACHE.get(target, "json", load)

    def config(self) -> dict:
        """study.yaml as a plain mapping ({} when absent)."""
        target = self.path / "study.yaml"

        def load():
            if not target.is_file():
                return {}
            try:
                data = yaml.safe_load(target.read_text())
            except (OSError, yaml.YAMLError) as exc:
                raise StudyUnreadable(f"{target} is not valid YAML ({exc})") from None
            return data if isinstance(data, dict) else {}

        return CACHE.get(target, "yaml", load)

    def objective(self) -> tuple[str, str]:
        """(metric, mode) of the study's first objective."""
        config = self.config()
        objectives = config.get("objectives") or [
            config.get("objective") or self.status_or_empty().get("objectives", [{}])[0]
        ]
        first = objectives[0] if objectives and isinstance(objectives[0], dict) else {}
        metric = str(first.get("metric") or "f1_weighted")
        return metric, str(first.get("mode") or metric_direction(metric))

    def status_or_empty(self) -> dict:
        try:
            return self.status()
        except StudyUnreadable:
            return {}

    def fidelity(self) -> tuple[int | None, int | None]:
        """(max_epochs, folds K) a fully trained trial reaches, from study.yaml (None: unknown)."""
        config = self.config()
        budget = config.get("budget") if isinstance(config.get("budget"), dict) else {}
        folds = config.get("folds") if isinstance(config.get("folds"), dict) else {}

        def number(value) -> int | None:
            try:
                return int(value)
            except (TypeError, ValueError):
                return None

        return number(budget.get("max_epochs")), number(folds.get("k"))

    def dataset_path(self) -> Path | None:
        dataset = self.config().get("dataset") or self.status_or_empty().get("dataset")
        if not dataset:
            return None
        path = Path(str(dataset))
        return path if path.is_absolute() else (self.path / path)

    def manifest(self) -> dict:
        """The dataset's manifest.json ({} when the dataset is not reachable from here)."""
        path = self.dataset_path()
        target = path / "manifest.json" if path else None
        if target is None or not target.is_file():
            return {}
        return CACHE.get(target, "manifest", lambda: json.loads(target.read_text()))

    def task(self) -> str:
        return str(
            self.manifest().get("task")
            or (
                "regression"
                if self.objective()[0].startswith(("r2", "mse", "mae"))
                else "classification"
            )
        )

    # -- tables ------------------------------------------------------------------------------
    def table(self, name: str) -> pd.DataFrame:
        target = self.path / f"{name}.parquet"

        def load():
            try:
                return self.store.table(name)
            except FormatError as exc:  # another format version: the message names the fix
                raise StudyUnreadable(str(exc)) from None
            except Exception as exc:  # a truncated or foreign file: say which, not a traceback
                raise StudyUnreadable(
                    f"{target} cannot be read as Parquet ({type(exc).__name__}: {exc})"
                ) from None

        return CACHE.get(target, "table", load)

    def trial_rows(self, name: str, trial_id: str) -> pd.DataFrame:
        """The rows of table ``name`` (folds, epochs) that belong to one trial; the index from
        trial id to rows is built once per version of the file, not per page view."""
        target = self.path / f"{name}.parquet"

        def load():
            table = self.table(name)
            if table.empty or "trial_id" not in table:
                return table, {}
            return table, table.groupby(table["trial_id"].astype(str), sort=False).indices

        table, index = CACHE.get(target, "by_trial", load)
        rows = index.get(str(trial_id))
        return table.iloc[rows] if rows is not None else table.iloc[0:0]

    def trials(self) -> pd.DataFrame:
        """trials.parquet with ``rank`` (by the objective) and ``key_params`` added."""
        target = self.path / "trials.parquet"
        return CACHE.get(
            target, "trials+", lambda: _prepare_trials(self.table("trials"), *self.objective())
        )

    def signature(self) -> tuple:
        """Changes whenever any file the pages read changes (for live refresh)."""
        names = (
            "study.json",
            "trials.parquet",
            "folds.parquet",
            "epochs.parquet",
            "explain/explain.json",
        )
        return tuple(_signature(self.path / n) for n in names)

    def metrics(self) -> list[str]:
        """Score metrics with a fold mean in trials.parquet, in display order."""
        trials = self.trials()
        found = [
            c[4:]
            for c in trials.columns
            if c.startswith("val/") and not c.endswith("_std") and c[4:] not in NOT_SCORES
        ]
        objective = self.objective()[0]
        order = {m: i for i, m in enumerate(METRIC_ORDER)}

        def key(m: str):
            well = m.startswith("well/")
            base = m[5:] if well else m
            return (m != objective, well, order.get(base, len(order)), base)

        return sorted(found, key=key)

    def summary(self) -> dict:
        """One Studies-page row: name, task, dataset, trials, best value, status (or the error)."""
        row = {"study": self.key, "path": str(self.path)}
        try:
            status = self.status()
            metric, mode = self.objective()
            trials = self.trials()
            key = f"val/{metric}"
            best = None
            if key in trials:
                best = trials[key].max() if mode == "max" else trials[key].min()
            counts = trials["status"].value_counts().to_dict() if "status" in trials else {}
            row.update(
                task=self.task(),
                dataset=os.path.normpath(self.dataset_path()) if self.dataset_path() else "?",
                trials=len(trials),
                completed=int(counts.get("completed", 0)),
                pruned=int(counts.get("pruned", 0)),
                objective=f"{metric} ({mode})",
                best=None if best is None or pd.isna(best) else float(best),
                status=str(status.get("status", "?")),
                error="",
            )
        except StudyUnreadable as exc:
            row.update(status="unreadable", error=str(exc), trials=0)
        return row


def _prepare_trials(trials: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    if trials.empty:
        return trials
    trials = trials.copy()
    key = f"val/{metric}"
    if key in trials:
        from cytotune.engine.search.leaderboard import ranked

        order = ranked(trials, key, mode).index  # the engine's order: pull --rank N agrees
        trials.loc[order, "rank"] = range(1, len(order) + 1)
        trials.loc[trials[key].isna(), "rank"] = float("nan")
    else:
        trials["rank"] = float("nan")
    trials["key_params"] = [key_params(p) for p in trials["params"]]
    return trials


def trial_params(row: pd.Series | dict) -> dict:
    """A trial's nested search sample ({} when unreadable)."""
    return sample_of(row.get("params"))


class Catalog:
    """The studies under the dashboard's ``--study`` directory (re-scanned when asked)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self._studies: dict[str, Study] = {}
        self.refresh()

    def refresh(self) -> dict[str, Study]:
        found = find_studies(self.root) if self.root.is_dir() else {}
        self._studies = {k: self._studies.get(k) or Study(k, p) for k, p in found.items()}
        return self._studies

    @property
    def keys(self) -> list[str]:
        return list(self._studies)

    def get(self, key: str | None) -> Study:
        """The study named ``key`` (the first one when None); StudyUnreadable when absent."""
        if key not in self._studies:
            self.refresh()
        if not self._studies:
            raise StudyUnreadable(
                f"no cytotune study under {self.root} (a study directory holds study.json, "
                "trials.parquet, ...; run `cytotune search` or `cytotune demo` first)"
            )
        if key is None or key == "":
            return next(iter(self._studies.values()))
        if key not in self._studies:
            raise StudyUnreadable(
                f"no study {key!r} under {self.root}; studies: {', '.join(self._studies)}"
            )
        return self._studies[key]

    def file(self, key: str, relative: str) -> Path:
        """A file inside study ``key``; PermissionError for anything outside it (.., links)."""
        study = self.get(key)
        base = study.path.resolve()
        if "\x00" in relative or relative.startswith(("/", "\\")) or ":" in relative.split("/")[0]:
            raise PermissionError(f"refused path {relative!r}")
        target = (base / relative).resolve()
        if not target.is_relative_to(base):
            raise PermissionError(f"refused path {relative!r}: outside the study directory")
        if not target.is_file():
            raise FileNotFoundError(relative)
        return target
