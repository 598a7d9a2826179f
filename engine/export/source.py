"""Which trial a bundle comes from: selection by rank, trial id or alias, its checkpoint
directory, its cross-validation metrics and its provenance."""

from __future__ import annotations

import json
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from cytotune.engine.search.store import StudyStore
from cytotune.engine.search.tables import FOLDS, TRIALS, TrialRow, decode_cell

# Columns of folds.parquet too big for a card: the ROC curves.
_FOLD_SKIP = ("roc", "well/roc")


@dataclass
class TrialSource:
    """One trial of a study, resolved to its checkpoint directory.

    Attributes:
        study_dir: the study directory.
        study: ``study.json`` (dataset, hashes, search space, objectives).
        trial: the trial's row of ``trials.parquet``.
        checkpoint: the trial's checkpoint directory (``fold_0`` ... ``fold_{K-1}``).
        objective: ``(metric, mode)`` the study ranked trials by.
        rank: the trial's leaderboard rank.
    """

    study_dir: Path
    study: dict
    trial: dict
    checkpoint: Path
    objective: tuple[str, str]
    rank: int | None = None
    selected_by: str = ""
    alias: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def trial_id(self) -> str:
        return str(self.trial["trial_id"])

    @property
    def row(self) -> TrialRow:
        """The trial's row of trials.parquet, typed (``extra``: its metric and param columns)."""
        return TRIALS.to_row(self.trial)

    def fold_dirs(self) -> list[Path]:
        dirs = sorted(
            (p for p in self.checkpoint.glob("fold_*") if p.is_dir()),
            key=lambda p: int(p.name.split("_")[1]),
        )
        if not dirs:
            raise FileNotFoundError(
                f"checkpoint {self.checkpoint} of trial {self.trial_id} holds no fold_* "
                "directory; the trial may not have finished an epoch"
            )
        return dirs

    def cv_state(self) -> dict:
        path = self.checkpoint / "cv.json"
        return json.loads(path.read_text()) if path.is_file() else {}


def open_study(study_dir: str | Path) -> tuple[StudyStore, dict]:
    store = StudyStore(str(study_dir))
    if not store.is_local:
        raise ValueError(
            f"cytotune pull reads local study directories; copy {study_dir} to a local path first"
        )
    return store, store.status()


def objective_of(store: StudyStore, study: dict) -> tuple[str, str]:
    """The study's first objective ``(metric, mode)`` from study.json (else study.yaml)."""
    objectives = study.get("objectives") or []
    if objectives and objectives[0].get("mode"):
        return objectives[0]["metric"], objectives[0]["mode"]
    from cytotune.engine.search.study import StudyConfig

    config = StudyConfig.from_yaml(Path(store.path) / "study.yaml")
    return config.objectives[0].metric, config.objectives[0].mode


def ranked_trials(store: StudyStore, objective: tuple[str, str]) -> pd.DataFrame:
    """The leaderboard (every trial, pruned included, as `cytotune search` prints it)."""
    from cytotune.engine.search.leaderboard import leaderboard

    return leaderboard(store, *objective)


def select_trial(
    study_dir: str | Path,
    rank: int | None = None,
    trial_id: str | None = None,
    alias: str | None = None,
) -> TrialSource:
    """Resolve ``--rank`` / ``--trial`` / ``--alias`` (default: rank 1) to a trial."""
    if sum(v is not None for v in (rank, trial_id, alias)) > 1:
        raise ValueError("give one of --rank, --trial or --alias")
    store, study = open_study(study_dir)
    objective = objective_of(store, study)
    board = ranked_trials(store, objective)
    if board.empty:
        raise ValueError(
            f"study {study_dir} has no trial with {objective[0]!r} yet; wait for the search "
            "to report (or check `cytotune search --resume`)"
        )
    selected_by = f"rank {rank or 1} by {objective[0]} ({objective[1]})"
    if alias is not None:
        from .aliases import Registry

        trial_id = Registry(study_dir).resolve(alias)
        selected_by = f"alias {alias!r}"
    if trial_id is not None:
        rows = board[board["trial_id"].astype(str) == str(trial_id)]
        if rows.empty:
            from cytotune.search_spaces.config import close_matches

            ids = board["trial_id"].astype(str).tolist()
            raise ValueError(
                f"trial {trial_id!r} is not in study {study_dir}{close_matches(trial_id, ids)}; "
                f"trials: {', '.join(ids)}"
            )
        row = rows.iloc[0].to_dict()
        selected_by = selected_by if alias is not None else f"trial id {trial_id}"
    else:
        rank = rank or 1
        if not 1 <= rank <= len(board):
            raise ValueError(f"--rank {rank} is out of range: study has {len(board)} trials")
        row = board.iloc[rank - 1].to_dict()
    checkpoint = resolve_checkpoint(Path(store.path), row)
    return TrialSource(
        Path(store.path),
        study,
        row,
        checkpoint,
        objective,
        rank=int(row["rank"]),
        selected_by=selected_by,
        alias=alias,
    )


def resolve_checkpoint(study_dir: Path, row: dict) -> Path:
    """The trial's checkpoint directory; found again under ``tune/`` when the study moved."""
    recorded = row.get("checkpoint")
    if recorded is None or (isinstance(recorded, float) and pd.isna(recorded)):
        raise ValueError(
            f"trial {row['trial_id']} has no checkpoint (status {row.get('status')!r}); "
            "pick a finished trial (see `cytotune pull --study DIR --list`)"
        )
    path = Path(str(recorded))
    if path.is_dir():
        return path
    parts = path.parts
    if "tune" in parts:
        moved = study_dir.joinpath(*parts[len(parts) - parts[::-1].index("tune") - 1 :])
        if moved.is_dir():
            return moved
    raise FileNotFoundError(
        f"checkpoint {recorded} of trial {row['trial_id']} not found (nor under {study_dir}/tune); "
        "was the study directory copied without tune/?"
    )


def fold_metrics(trial_id: str, record: dict) -> dict[str, Any]:
    """One fold's metrics, a folds.parquet record or an entry of the checkpoint's metrics.json,
    as JSON-ready values: the typed :class:`~cytotune.engine.search.tables.FoldRow` with its
    scores as numbers (None when missing) and its confusion matrices as lists of lists, decoded
    and checked by :func:`~cytotune.engine.search.tables.decode_cell`; the ROC curves are left
    out (too big for a card).

    Raises:
        ValueError: a malformed confusion matrix, or a text cell in a column that holds no JSON
            (the message names the column and the fix).
    """
    row = FOLDS.to_row({**record, "trial_id": trial_id})
    out: dict[str, Any] = {"fold": row.fold}
    out |= {k: v for k, v in (("epoch", row.epoch), ("n_val", row.n_val)) if v is not None}
    for column, value in row.extra.items():
        if column in _FOLD_SKIP:
            continue
        if isinstance(value, (str, bytes, list, tuple, dict, np.ndarray)):
            value = decode_cell("folds", column, value)
        out[column] = value.tolist() if hasattr(value, "tolist") else value
    return out


def cv_metrics(source: TrialSource) -> dict[str, Any]:
    """Per-fold validation metrics (folds.parquet, else the checkpoint's metrics.json) and the
    fold mean and std of every metric (trials.parquet)."""
    store = StudyStore(str(source.study_dir))
    folds = store.table("folds")
    records: list[dict] = []
    if not folds.empty:
        mine = folds[folds["trial_id"].astype(str) == source.trial_id].sort_values("fold")
        records = mine.to_dict("records")
    if not records and (source.checkpoint / "metrics.json").is_file():
        records = json.loads((source.checkpoint / "metrics.json").read_text())
    rows = [fold_metrics(source.trial_id, record) for record in records]
    row = source.row
    names = [key[4:] for key in row.extra if key.startswith("val/")]
    mean = {name: row.metric(name) for name in names if row.metric(name) is not None}
    metric, mode = source.objective
    return {
        "objective": {"metric": metric, "mode": mode},
        "mean": mean,
        "folds": rows,
        "epochs": row.epochs_done,
        "status": row.status,
    }


def git_commit() -> dict[str, Any]:
    """The cytotune source tree's commit (and whether it had local changes), when in git."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None}
    return {"commit": commit, "dirty": bool(dirty)}


def versions(formats: list[str] = ()) -> dict[str, str | None]:
    import numpy
    import timm
    import torch

    from cytotune import engine

    out = {
        "cytotune": engine.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": numpy.__version__,
    }
    if "onnx" in formats:
        import onnx
        import onnxruntime

        out |= {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    return out


def provenance(source: TrialSource, data: dict, formats: list[str], **extra: Any) -> dict:
    """Where the bundle's weights come from and what produced them."""
    study, cv, row = source.study, source.cv_state(), source.row
    return {
        "study": {
            "name": study.get("name"),
            "directory": str(source.study_dir),
            "status": study.get("status"),
            "objective": dict(zip(("metric", "mode"), source.objective)),
        },
        "trial": {
            "trial_id": source.trial_id,
            "number": row.number,
            "rank": source.rank,
            "selected_by": source.selected_by,
            "status": row.status,
            "epochs_done": row.epochs_done,
            "params": row.sample,
            "checkpoint": str(source.checkpoint),
        },
        "dataset": {
            "name": data.get("dataset"),
            "path": study.get("dataset"),
            "content_hash": data.get("content_hash"),
            "study_dataset_hash": study.get("dataset_hash"),
        },
        "folds": {
            "name": cv.get("folds", study.get("folds")),
            "hash": cv.get("fold_hash", study.get("fold_hash")),
        },
        "search_space": study.get("space"),
        "versions": versions(formats),
        "git": git_commit(),
        "created": time.time(),
        **extra,
    }
