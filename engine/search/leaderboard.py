"""The leaderboard of a study as a DataFrame and as text (the end of a search, the demo)."""

from __future__ import annotations

import pandas as pd

from .store import StudyStore


def ranked(trials: pd.DataFrame, key: str, mode: str) -> pd.DataFrame:
    """Trials in leaderboard order: full-fidelity scores first (every fold and epoch, status
    "completed"), then by ``key`` (best first, missing last); ties go to the trial that started
    first (``number``, then ``trial_id``), whatever order the table's rows are in. The one
    ranking of the engine, ``cytotune pull --rank`` and the dashboard."""
    full = (trials["status"] == "completed").astype(int) if "status" in trials else 1
    number = trials["number"] if "number" in trials else pd.Series(0, index=trials.index)
    order = trials.assign(
        _full=full,
        _number=pd.to_numeric(number, errors="coerce"),
        _id=trials["trial_id"].astype(str),
    ).sort_values(
        ["_full", key, "_number", "_id"],
        ascending=[False, mode == "min", True, True],
        na_position="last",
        kind="stable",
    )
    return order.drop(columns=["_full", "_number", "_id"])


def leaderboard(
    store: StudyStore, metric: str, mode: str, include_pruned: bool = True
) -> pd.DataFrame:
    """Trials ranked by the fold mean of ``metric`` (best first), with mean and std columns."""
    trials = store.table("trials")
    key = f"val/{metric}"
    if trials.empty or key not in trials:
        return pd.DataFrame()
    if not include_pruned:
        trials = trials[trials["status"] != "pruned"]
    # a trial raced out after one fold is never ranked above one scored on all of them
    ranked_trials = ranked(trials, key, mode).reset_index(drop=True)
    ranked_trials.insert(0, "rank", range(1, len(ranked_trials) + 1))
    return ranked_trials


def format_leaderboard(
    store: StudyStore,
    metric: str,
    mode: str,
    top: int = 10,
    extra=("accuracy", "balanced_accuracy", "auc_macro", "r2"),
) -> str:
    """A text table: rank, trial, family, status, epochs, metric mean ± std and a few others."""
    board = leaderboard(store, metric, mode)
    if board.empty:
        return "no finished trial yet"
    metrics = [metric] + [m for m in extra if m != metric and f"val/{m}" in board]
    head = f"{'rank':>4}  {'trial':<14} {'family':<18} {'status':<9} {'ep':>3} {'folds':>5}  "
    head += "  ".join(f"{m:<17}" for m in metrics)
    lines = [head]
    for row in board.head(top).to_dict("records"):
        cells = []
        for m in metrics:
            mean, std = row.get(f"val/{m}"), row.get(f"val/{m}_std")
            cells.append(
                f"{'-':<17}"
                if pd.isna(mean)
                else f"{mean:.4f} ± {0 if pd.isna(std) else std:.4f}  "
            )
        lines.append(
            f"{row['rank']:>4}  {row['trial_id']:<14} {str(row['family'])[:18]:<18} {row['status']:<9} {int(row.get('epochs_done') or 0):>3} {_folds(row):>5}  "
            + "  ".join(cells)
        )
    return "\n".join(lines)


def _folds(row: dict) -> str:
    """Folds a trial was scored on ("-" for studies from before fold racing)."""
    done = row.get("folds_done")
    return "-" if done is None or pd.isna(done) else str(int(done))
