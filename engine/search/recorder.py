"""What a search writes to the results store, without Ray: trials, folds and learning curves.

:class:`StudyRecorder` turns a trial's life (start, each report, completion or error) into rows
of the tables :mod:`cytotune.engine.search.tables` defines. The search's Tune callback
(:class:`cytotune.engine.search.callbacks.StoreCallback`) drives it from Tune's events; tests and
benchmarks drive it directly, so a study they build is what a search writes.
"""

from __future__ import annotations

import json
import math
import re
import time

from . import tables
from .store import StudyStore

_FOLD_KEY = re.compile(r"^fold(\d+)/(.+)$")


class StudyRecorder:
    """Records trials of one study in its store.

    Args:
        store: the study's store.
        k: folds per trial.
        max_epochs: epochs of a fully trained trial.
        race: "epochs" (all folds report each epoch) or "folds" (one fold to the end at a time).
        flush_every_s: write the tables at most this often on reports (events that end or start
            a trial always write).
    """

    def __init__(
        self,
        store: StudyStore,
        k: int,
        max_epochs: int,
        race: str = "epochs",
        flush_every_s: float = 2.0,
    ) -> None:
        self.store, self.k, self.max_epochs, self.race = store, k, max_epochs, race
        self.flush_every_s = flush_every_s
        self._last_flush = 0.0

    @classmethod
    def for_study(cls, store: StudyStore, study, flush_every_s: float = 2.0) -> StudyRecorder:
        """A recorder for a :class:`~cytotune.engine.search.study.StudyConfig`."""
        return cls(store, study.folds.k, study.budget.max_epochs, study.budget.race, flush_every_s)

    def flush(self, force: bool = False) -> None:
        if force or time.time() - self._last_flush > self.flush_every_s:
            self.store.flush()
            self._last_flush = time.time()

    def _row(self, trial_id: str) -> tables.TrialRow:
        return self.store.trial(trial_id) or tables.TrialRow(trial_id)

    def is_final(self, trial_id: str) -> bool:
        """Recorded as completed or pruned (a restored trial re-confirms, nothing re-runs)."""
        return self._row(trial_id).status in tables.FINAL

    # -- events ----------------------------------------------------------------------------
    def started(self, trial_id: str, sample: dict) -> None:
        """A trial started (or restarted) with the nested search ``sample``."""
        row = self._row(trial_id)
        if row.status in tables.FINAL:
            return  # restored after a driver restart from its final checkpoint: nothing re-runs
        number = row.number if row.number is not None else len(self.store.rows("trials"))
        self.store.upsert(
            "trials",
            (trial_id,),
            {
                "trial_id": trial_id,
                "number": number,
                "status": "running",
                "family": sample.get("family"),
                "params": json.dumps(sample, default=str),
                "started_at": row.started_at or time.time(),
                **tables.param_columns(sample),
            },
        )
        self.flush(force=True)

    def reported(self, trial_id: str, result: dict, node: str | None = None) -> None:
        """A report of the trainable: fold means (``val/*``), per-fold values (``fold<k>/*``,
        race: epochs) or a finished fold's learning curve (``fold_curve``, race: folds)."""
        epoch = int(result["epoch"])
        means = {k: v for k, v in result.items() if k.startswith("val/")}
        self.store.upsert(
            "trials",
            (trial_id,),
            {
                **self._node_fields(trial_id, result.get("node_id") or node),
                "epochs_done": epoch,
                "folds_done": int(result.get("folds_done", self.k)),
                "train_loss": result.get("train_loss"),
                "images_per_s": result.get("images_per_s"),
                **means,
                **{k: v for k, v in result.items() if k.startswith("time/")},
            },
        )
        if "fold_curve" in result:
            self._record_fold_curve(trial_id, int(result["fold"]), result["fold_curve"])
            self.flush()
            return
        for fold, row in self._epoch_rows(trial_id, result).items():
            self.store.upsert("epochs", (trial_id, epoch, fold), row)
        self.flush()

    def backfill(self, trial_id: str, results: list[dict]) -> int:
        """The epoch rows of ``results`` (the trial's reports as Tune's JSON logger kept them)
        that the store lacks; returns how many were added. A driver killed between a report and
        the store's next flush lost them, and the resumed trial goes on after its checkpoint
        without reporting them again."""
        have = {
            (int(r["epoch"]), int(r["fold"]))
            for r in self.store.rows("epochs")
            if r.get("trial_id") == trial_id
        }
        added = 0
        for result in results:
            if "epoch" not in result:
                continue
            if "fold_curve" in result:
                fold = int(result["fold"])
                missing = {(int(p["epoch"]), fold) for p in result["fold_curve"]} - have
                if missing:
                    self._record_fold_curve(trial_id, fold, result["fold_curve"])
                    have |= missing
                    added += len(missing)
                continue
            epoch = int(result["epoch"])
            for fold, row in self._epoch_rows(trial_id, result).items():
                if (epoch, fold) not in have:
                    self.store.upsert("epochs", (trial_id, epoch, fold), row)
                    have.add((epoch, fold))
                    added += 1
        if added:
            self.flush(force=True)
        return added

    def completed(
        self,
        trial_id: str,
        last_result: dict | None = None,
        checkpoint: str | None = None,
        fold_details: list[dict] | None = None,
    ) -> None:
        """A trial ended (finished or pruned): its status, checkpoint and per-fold metrics.

        Args:
            last_result: the trial's last report as Tune kept it (it may know more than the
                store when the driver was killed before its last flush).
            checkpoint: the trial's checkpoint directory.
            fold_details: the checkpoint's metrics.json (one dict per fold).
        """
        row = self._row(trial_id)
        if row.status in tables.FINAL:
            return  # already recorded before a driver restart; Tune only re-confirms it
        update: dict = {"ended_at": time.time()}
        epochs = _count(row.epochs_done)
        last = dict(last_result or {})
        if _count(last.get("epoch")) > epochs:
            # a driver killed before the store's last flush: Tune's state knows more results
            # than the store; take the final ones from it
            epochs = _count(last["epoch"])
            update |= {
                "epochs_done": epochs,
                **{k: v for k, v in last.items() if k.startswith("val/")},
            }
        if _count(last.get("folds_done")) > _count(row.folds_done):
            update["folds_done"] = _count(last["folds_done"])
        update["status"] = "completed" if self._finished(row, last) else "pruned"
        if checkpoint is not None:
            update["checkpoint"] = checkpoint
            self.folds(trial_id, fold_details or [])
        self.store.upsert("trials", (trial_id,), update)
        self.flush(force=True)

    def folds(self, trial_id: str, details: list[dict]) -> None:
        """A trial's final per-fold metrics (one dict per fold, with ``fold``)."""
        for fold in details:
            self.store.upsert(
                "folds", (trial_id, int(fold["fold"])), {**fold, "trial_id": trial_id}
            )

    def stopped(
        self, trial_id: str, checkpoint: str | None = None, fold_details: list[dict] | None = None
    ) -> None:
        """A running trial the time budget (or a stopper) ended mid-run, with its last
        checkpoint, so it can be explained and pulled like the others."""
        if self._row(trial_id).status != "running":
            return
        update: dict = {"status": "stopped", "ended_at": time.time()}
        if checkpoint is not None:
            update["checkpoint"] = checkpoint
            self.folds(trial_id, fold_details or [])
        self.store.upsert("trials", (trial_id,), update)

    def recovered(self, trial_id: str, error: str) -> None:
        """A trial retried after an error (a lost node, a crashed worker)."""
        retries = (self._row(trial_id).retries or 0) + 1
        self.store.upsert("trials", (trial_id,), {"retries": retries, "last_error": error})
        self.flush(force=True)

    def failed(self, trial_id: str, error: str) -> None:
        self.store.upsert(
            "trials", (trial_id,), {"status": "failed", "ended_at": time.time(), "error": error}
        )
        self.flush(force=True)

    # -- helpers ---------------------------------------------------------------------------
    @staticmethod
    def _epoch_rows(trial_id: str, result: dict) -> dict[int, dict]:
        """The epochs rows of one report (race: epochs): each fold's values (``fold<k>/*``)
        and the fold means (fold -1)."""
        epoch = int(result["epoch"])
        rows: dict[int, dict] = {}
        for key, value in result.items():
            match = _FOLD_KEY.match(key)
            if match:
                fold = int(match.group(1))
                row = rows.setdefault(fold, {"trial_id": trial_id, "epoch": epoch, "fold": fold})
                row[match.group(2)] = value
        means = {k[4:]: v for k, v in result.items() if k.startswith("val/")}
        rows[-1] = {
            "trial_id": trial_id,
            "epoch": epoch,
            "fold": -1,
            **means,
            **{k: result.get(k) for k in ("train_loss", "images_per_s", "epoch_seconds")},
        }
        return rows

    def _node_fields(self, trial_id: str, node: str | None) -> dict:
        """``node_id``: the Ray node the trial reported from; ``nodes``: every node it ran on,
        in order (a trial retried after its node was lost shows both)."""
        if not node:
            return {}
        seen = [n for n in str(self._row(trial_id).nodes or "").split(",") if n]
        if not seen or seen[-1] != node:
            seen.append(node)
        return {"node_id": node, "nodes": ",".join(seen)}

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
            keys -= {"epoch", "fold", "n_folds"}
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

    def _finished(self, row: tables.TrialRow, last: dict) -> bool:
        """Scored at full fidelity: every fold (race: folds) or every epoch (race: epochs)."""
        if self.race == "folds":
            return max(_count(row.folds_done), _count(last.get("folds_done"))) >= self.k
        return max(_count(row.epochs_done), _count(last.get("epoch"))) >= self.max_epochs


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(float(value))


def _count(value) -> int:
    """An epoch count from a store cell or a result (None and NaN count as 0)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0
    return int(number) if math.isfinite(number) else 0
