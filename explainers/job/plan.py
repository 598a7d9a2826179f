"""What the explain job works on: the trials, their fold models, and the cells each explains."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from cytotune.engine.data.dataset import CellDataset
from cytotune.engine.data.folds import load_folds
from cytotune.engine.search.leaderboard import leaderboard
from cytotune.engine.search.store import StudyStore
from cytotune.engine.search.study import StudyConfig

from .config import ExplainConfig


@dataclass(frozen=True)
class TrialModels:
    """One trial to explain: its rank, family and fold checkpoint directories."""

    trial_id: str
    rank: int
    family: str
    value: float
    fold_dirs: dict[int, str]  # fold -> checkpoint directory of that fold's model


@dataclass
class ExplainPlan:
    study_dir: Path
    dataset: CellDataset
    metric: str
    trials: list[TrialModels]
    cells: pd.DataFrame  # cell_id, fold (model that explains the cell), row (storage order)
    folds: pd.DataFrame = field(repr=False)  # cell_id, fold (validation fold of every cell)

    @property
    def manifest(self):
        return self.dataset.manifest

    @property
    def has_evidence(self) -> bool:
        import pyarrow.parquet as pq

        return "evidence" in pq.read_schema(self.dataset.shard_paths[0]).names


def _study_config(store: StudyStore) -> StudyConfig:
    data = yaml.safe_load(store.read_bytes("study.yaml").decode())
    return StudyConfig.from_dict(data, base_dir=store.path)


def _fold_dirs(checkpoint) -> dict[int, str]:
    """``{fold: directory}`` of the fold models in a trial checkpoint."""
    return {
        int(p.name.split("_")[1]): str(p)
        for p in sorted(Path(checkpoint).glob("fold_*"))
        if (p / "config.json").is_file()
    }


def select_trials(store: StudyStore, config: ExplainConfig) -> tuple[str, list[TrialModels]]:
    """The trials to explain (explicit ids, or the top k with a checkpoint of every fold)."""
    study = _study_config(store)
    metric, mode = study.objectives[0].metric, study.objectives[0].mode
    board = leaderboard(store, metric, mode)
    if board.empty:
        raise ValueError(
            f"study {store.uri} has no finished trial with val/{metric} yet; "
            "wait for the search to report or run `cytotune search` first"
        )
    board = board[board["checkpoint"].notna()]
    if config.trials:
        missing = sorted(set(config.trials) - set(board["trial_id"]))
        if missing:
            raise ValueError(
                f"trial(s) {missing} have no checkpoint in study {store.uri}; "
                f"choose from {board['trial_id'].tolist()[:20]}"
            )
        board = board[board["trial_id"].isin(config.trials)]
    else:  # fully trained trials first, then stopped/pruned ones by rank when too few finished;
        # only trials with a model of every fold (one raced out after some folds has fewer)
        usable = board[~board["status"].isin(("error", "failed"))]
        every_fold = usable["checkpoint"].map(lambda c: len(_fold_dirs(c)) >= study.folds.k)
        usable = usable[every_fold | (usable["status"] == "completed")]
        finished = usable["status"] == "completed"
        board = pd.concat([usable[finished], usable[~finished]]).head(config.top_k)
    trials = []
    for row in board.to_dict("records"):
        checkpoint = Path(row["checkpoint"])
        fold_dirs = _fold_dirs(checkpoint)
        if not fold_dirs:
            raise FileNotFoundError(
                f"trial {row['trial_id']}: checkpoint {checkpoint} has no fold_<k>/config.json; "
                "the study directory is incomplete (moved or partly deleted?)"
            )
        value = row.get(f"val/{metric}")
        trials.append(
            TrialModels(
                row["trial_id"], int(row["rank"]), str(row["family"]), float(value), fold_dirs
            )
        )
    return metric, trials


def build_plan(config: ExplainConfig) -> ExplainPlan:
    """Resolve the study, its dataset and folds, the trials and the cells to explain."""
    store = StudyStore(config.study)
    info = store.status()
    if not store.is_local:
        raise ValueError(
            f"explain writes next to the study and needs a local study directory, got {config.study}; "
            "copy the study to local disk (or mount it) first"
        )
    metric, trials = select_trials(store, config)
    dataset = CellDataset(info["dataset"])
    if dataset.manifest.content_hash != info.get("dataset_hash", dataset.manifest.content_hash):
        raise ValueError(
            f"dataset {info['dataset']} changed since the study ran (content hash differs); "
            "explain the study on the dataset it was trained on"
        )
    fold_set = load_folds(info["dataset"], info["folds"])
    assignment = fold_set.assignment[["cell_id", "fold"]].copy()
    meta = dataset.metadata()[["cell_id"]].reset_index(names="row")
    cells = meta.merge(assignment, on="cell_id", how="inner")
    if config.split == "train":  # a fold model that trained on the cell: the next fold's
        cells["fold"] = (cells["fold"] + 1) % fold_set.k
    if config.limit is not None and config.limit < len(cells):
        rng = np.random.default_rng(config.seed)
        keep = np.sort(rng.choice(len(cells), size=config.limit, replace=False))
        cells = cells.iloc[keep]
    for trial in trials:
        missing = sorted(set(cells["fold"].unique()) - set(trial.fold_dirs))
        if missing:
            raise FileNotFoundError(
                f"trial {trial.trial_id} has no model for fold(s) {missing}; its checkpoint "
                "holds only " + str(sorted(trial.fold_dirs))
            )
    return ExplainPlan(
        Path(store.path), dataset, metric, trials, cells.reset_index(drop=True), assignment
    )
