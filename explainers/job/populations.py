"""Stage 2: population maps per trial, method and class (the seed paper's global method).

Gmean-Shape: weighted geometric mean of the class's crops, each channel scaled by the dataset's
99th percentile. Gmean-<method>: geometric mean of the cells' maps (positive part, summed over
channels, each scaled to a maximum of 1 so every cell counts alike). Both stream over the data
(log-space sums), then a patch-wise Pearson map compares them per channel and for the channel
mean, with the shares of pixels above ``|r| > threshold``.
"""

from __future__ import annotations

import io
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from cytotune.engine.io import atomic_write_bytes

from ..methods.channels import overlay
from ..population import PerClassGeometricMean, compare_population_maps
from .config import ExplainConfig
from .figures import diverging, grid, save_png
from .layout import (
    empty_index,
    explain_dir,
    finite_maps,
    iter_maps,
    maps_path,
    maps_staging_dir,
    population_dir,
    read_index,
    upsample_bilinear,
    write_frame,
)
from .plan import ExplainPlan
from .state import ExplainState
from .tiles import DIVERGING_LUT, render_tile, with_bar

CHUNK = 2048


def class_of_cells(plan: ExplainPlan) -> tuple[list[str], pd.Series]:
    """Population groups and each planned cell's group (true class; ``all`` for regression)."""
    if plan.manifest.task != "classification":
        return ["all"], pd.Series("all", index=plan.cells["cell_id"].to_numpy())
    meta = plan.dataset.metadata().set_index("cell_id")["label"]
    return list(plan.manifest.classes), meta.loc[plan.cells["cell_id"].to_numpy()]


def image_scale(plan: ExplainPlan) -> np.ndarray:
    p99 = np.asarray(plan.manifest.stats.p99, dtype=float)
    return np.where(p99 > 0, p99, 1.0)[:, None, None]  # (C, 1, 1)


def gmean_images(plan: ExplainPlan, classes: list[str], groups: pd.Series, eps: float) -> dict:
    """Gmean-Shape per class, streaming over the planned cells in chunks."""
    acc = PerClassGeometricMean(classes, plan.manifest.shape, eps=eps)
    rows = plan.cells["row"].to_numpy()
    scale = image_scale(plan)
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start : start + CHUNK]
        images = np.clip(plan.dataset.images(chunk).astype(np.float64) / scale, 0, 1)
        acc.update(images, groups.to_numpy()[start : start + CHUNK])
    return acc.results()


# Each part's log sums are rounded to multiples of 2**-32 and added as integers: the sums then
# have the same bits in whatever order the parts are added (streamed as the maps stage writes
# them, or read after it), and a 1M-cell table stays far inside int64.
FIXED_POINT = 2.0**32


def part_files(path: str | Path) -> list[Path]:
    """The Parquet files of a map table, by name: the parts of its directory (hidden and
    ``_`` names are not parts), or the table itself where it is a single file; [] where
    there is none (yet)."""
    path = Path(path)
    if path.is_file():
        return [path]
    try:
        names = sorted(p.name for p in path.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [path / n for n in names if n.endswith(".parquet") and not n.startswith((".", "_"))]


class MapSums:
    """Per-class sums of ``log(map + eps)`` over a (trial, method) map table, added a part file
    at a time (each map: positive part summed over channels, upsampled to the crop, scaled to a
    maximum of 1, so every cell counts alike). Regression tables use their first target.

    Args:
        classes: the populations.
        groups: each planned cell's population, indexed by cell id.
        hw: the crop's size.
        eps: the geometric mean's stabiliser.
        regression: whether the table holds regression targets.
    """

    def __init__(self, classes, groups: pd.Series, hw, eps: float, regression: bool) -> None:
        self.classes, self.hw, self.eps, self.regression = list(classes), tuple(hw), eps, regression
        self.lookup = dict(zip(groups.index.tolist(), groups.tolist()))
        self.added: set[str] = set()  # the part file names in the sums
        self._reset()

    def _reset(self) -> None:
        self.added.clear()
        self.log = np.zeros((len(self.classes), 1, *self.hw), np.int64)
        self.count = np.zeros(len(self.classes), np.int64)

    def add(self, path: Path, missing_ok: bool = True) -> bool:
        """Add one part file (once per name); False where it was already added, or has gone
        and ``missing_ok`` (a staging directory's part, published or replaced meanwhile: seen
        where it is now)."""
        if path.name in self.added:
            return False
        try:
            part = self._part(path)
        except FileNotFoundError:
            if not missing_ok:
                raise
            return False
        for k, cls in enumerate(self.classes):
            acc = part.accumulators[cls]
            if acc.count:
                self.log[k] += np.rint(acc.log_sum * FIXED_POINT).astype(np.int64)
                self.count[k] += acc.count
        self.added.add(path.name)
        return True

    def add_new(self, table: str | Path) -> int:
        """Add the parts of ``table`` (a map table or a staging directory) not added yet."""
        return sum(self.add(p) for p in part_files(table))

    def results(self, table: str | Path) -> dict:
        """``{class: (1, H, W) geometric mean}`` of the finished table ``table``, for the classes
        with cells. Parts added earlier under a name the table lacks (a staging directory's part
        that publishing removed or rewrote) start the sums again from the table."""
        files = part_files(table)
        if self.added - {p.name for p in files}:
            self._reset()
        for path in files:
            self.add(path, missing_ok=False)  # a finished table's part must be there
        return {
            cls: np.exp(self.log[k] / FIXED_POINT / self.count[k]) - self.eps
            for k, cls in enumerate(self.classes)
            if self.count[k]
        }

    def _part(self, path: Path) -> PerClassGeometricMean:
        """One part's sums (float64). Read as Arrow columns, not data frames: the population
        stage's threads share the interpreter lock with the other stages, and the frames were a
        third of this function's share of it."""
        import pyarrow.compute as pc

        acc = PerClassGeometricMean(self.classes, (1, *self.hw), eps=self.eps)
        columns = ["cell_id", "map", "map_shape", "target_index"]
        for batch in iter_maps(path, columns, batch_size=CHUNK):
            if self.regression:  # one population per target would repeat the cells: the first
                batch = batch.filter(pc.equal(batch.column("target_index"), 0))
            if batch.num_rows == 0:
                continue
            shape = tuple(batch.column("map_shape")[0].as_py())
            blob = b"".join(batch.column("map").to_pylist())
            maps = np.frombuffer(blob, np.float16).reshape(batch.num_rows, *shape)
            maps = finite_maps(maps.astype(np.float32))  # old tables: inf past float16's range
            maps = upsample_bilinear(maps, self.hw).astype(np.float64)  # a CAM at its layer's size
            maps = np.clip(maps, 0, None).sum(1, keepdims=True)  # (B, 1, H, W)
            peak = maps.reshape(batch.num_rows, -1).max(1)
            maps = np.where(
                peak[:, None, None, None] > 0,
                maps / np.maximum(peak, 1e-30)[:, None, None, None],
                0,
            )
            acc.update(maps, [self.lookup[c] for c in batch.column("cell_id").to_pylist()])
        return acc


def gmean_maps(
    path, classes: list[str], groups: pd.Series, hw: tuple[int, int], eps: float, regression: bool
) -> dict:
    """Gmean of one (trial, method) map table per class (regression: first target only)."""
    return MapSums(classes, groups, hw, eps, regression).results(path)


@dataclass(frozen=True)
class FollowMaps:
    """Where a (trial, method) pair's map parts appear while the maps stage runs, so the
    population figures add them as they are written instead of reading every map after it.

    Attributes:
        staging: the maps run's staging directory of the pair.
        ended: a file the population stage writes once the maps stage has ended
            (:func:`write_ended`): whether it succeeded, and the pairs that failed in it.
        part: the pair's maps part (``maps/<trial>/<method>``).
        poll_s: seconds between looks at ``staging``.
    """

    staging: Path
    ended: Path
    part: str = ""
    poll_s: float = 0.2

    def follow(self, sums: MapSums) -> bool:
        """Add the parts as they appear until the maps stage has ended; whether it succeeded
        for this pair (a pair that failed leaves an older table, if any, which its staging
        parts must not be mixed with)."""
        while not self.ended.exists():
            sums.add_new(self.staging)
            time.sleep(self.poll_s)
        ended = json.loads(self.ended.read_text())
        return bool(ended["ok"]) and self.part not in ended["failed"]


def write_ended(path: Path, ok: bool, failed=()) -> None:
    """The file that tells the following pairs the maps stage has ended (:class:`FollowMaps`)."""
    atomic_write_bytes(path, json.dumps({"ok": ok, "failed": sorted(failed)}).encode())


def maps_part(trial_id: str, method: str) -> str:
    """A (trial, method) pair's part name in the maps stage (``maps.part_name``; not imported:
    this module's stage processes import no torch)."""
    return f"maps/{trial_id}/{method}"


def failed_maps(state) -> set[str]:
    """The maps parts that failed (their errors are in the state's failures)."""
    failures = getattr(state, "data", {}).get("failures", {})
    return {part for part in failures if part.startswith("maps/")}


def _save_npy(path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array.astype(np.float32))
    atomic_write_bytes(path, buffer.getvalue())


@dataclass(frozen=True)
class PopulationWork:
    """What every (trial, method) pair's population figures need; it pickles, so a stage child
    can take pairs (:func:`~cytotune.explainers.job.processes.map_in_processes`)."""

    study_dir: Path
    names: tuple[str, ...]
    hw: tuple[int, int]
    regression: bool
    radius: int
    threshold: float
    classes: tuple[str, ...]
    groups: pd.Series  # each planned cell's population, indexed by cell id
    shape_means: dict
    eps: float


def population_work(plan, config, classes, groups, shape_means, eps: float) -> PopulationWork:
    """The :class:`PopulationWork` of ``plan`` with the classes' mean crops ``shape_means``."""
    return PopulationWork(
        study_dir=Path(plan.study_dir),
        names=tuple(plan.manifest.channel_names),
        hw=tuple(plan.manifest.shape[1:]),
        regression=plan.manifest.task != "classification",
        radius=config.radius,
        threshold=config.threshold,
        classes=tuple(classes),
        groups=groups,
        shape_means=shape_means,
        eps=eps,
    )


def run_population(
    plan: ExplainPlan,
    config: ExplainConfig,
    state: ExplainState,
    eps: float = 1e-3,
    maps_ready=None,
) -> pd.DataFrame:
    """Write population maps and ``population.parquet``; returns the summary table.

    With ``maps_ready`` (the wait for a maps stage beside this one) the classes' mean crops are
    computed before the wait, and where the pairs go to stage processes
    (:func:`~cytotune.explainers.job.processes.tail_processes`) those start at the maps' first
    batch and add each map part as it is written (:class:`FollowMaps`): after the maps only
    the figures are left to draw. Otherwise the (trial, method) pairs are read and drawn after
    the maps, in stage processes or threads (numpy, zlib and file writes release the lock)."""
    from .processes import map_in_processes, tail_processes

    classes, groups = class_of_cells(plan)
    key = config.maps_key() + f"-r{config.radius}-t{config.threshold}"
    summary_path = explain_dir(plan.study_dir) / "population.parquet"
    old = (
        empty_index("population") if config.overwrite else read_index(plan.study_dir, "population")
    )
    work: list = []  # (part, part_key, trial_id, method, source) to draw, or kept rows
    for trial in plan.trials:
        for method in config.method_names:
            part = f"population/{trial.trial_id}/{method}"
            part_key = key + "-" + config.method_key(method)
            if state.done(part, part_key) and not config.overwrite and not old.empty:
                kept = old[(old["trial_id"] == trial.trial_id) & (old["method"] == method)]
                if len(kept):
                    work.append(kept.to_dict("records"))
                    continue
            source = maps_path(plan.study_dir, trial.trial_id, method)
            work.append((part, part_key, trial.trial_id, method, source))
    todo = [w for w in work if isinstance(w, tuple)]
    # the mean crops read no map: computed beside the maps when some pair will be drawn
    common = (
        population_work(
            plan, config, classes, groups, gmean_images(plan, classes, groups, eps), eps
        )
        if todo
        else None
    )
    pairs = todo
    follow = bool(maps_ready is not None and todo and tail_processes() > 1 and follow_wanted())
    if follow:
        run_id = _maps_run_id(state)
        follow = run_id is not None
    if maps_ready is not None and not follow:
        maps_ready()
        state.mark("population/maps_ready")
        failed = failed_maps(state)  # a method that failed has no table, or an older one
        pairs = [w for w in todo if w[-1].exists() and maps_part(w[2], w[3]) not in failed]
    jobs = [(common, *w[2:]) for w in pairs]
    if follow:
        ended = explain_dir(plan.study_dir) / f".maps-ended-{uuid.uuid4().hex[:10]}"
        jobs = [
            (
                *job,
                FollowMaps(
                    maps_staging_dir(plan.study_dir, job[1], job[2], run_id),
                    ended,
                    maps_part(job[1], job[2]),
                ),
            )
            for job in jobs
        ]
        drawn = _drawn_beside_maps(jobs, maps_ready, ended, state)
    else:
        threads = min(8, os.cpu_count() or 1, max(1, len(jobs)))
        drawn = map_in_processes(population_of, jobs, threads, "population")
    done = dict(zip(pairs, drawn))
    state.mark("population/drawn")
    rows: list[dict] = []
    for w in work:
        if not isinstance(w, tuple):
            rows += w
        elif done.get(w) is not None:  # None: the method failed on this trial (no map table)
            rows += done[w]
            state.finish(w[0], w[1])
    table = pd.DataFrame(rows)
    if not table.empty:
        write_frame(table, summary_path)
    return table


FOLLOW_ENV = "CYTOTUNE_FOLLOW_MAPS"


def follow_wanted() -> bool:
    """Whether the population processes add the map parts as they are written (default), or
    read the tables after the maps stage (``CYTOTUNE_FOLLOW_MAPS=0``, to compare)."""
    from .executor import switch

    return switch(FOLLOW_ENV, default=True)


def _maps_run_id(state) -> str | None:
    """This job's maps run, once its first batch is back; None where the maps stage ended
    without one (nothing to compute) or the state has no maps stage beside it."""
    warm = getattr(state, "maps_warm", None)
    if warm is None:
        return None
    warm.wait()
    return getattr(state, "maps_run_id", None)


def _drawn_beside_maps(jobs: list[tuple], maps_ready, ended: Path, state) -> list:
    """:func:`population_of` of every job in stage processes started now, each pair adding its
    map parts as they are written; ``ended`` tells them the maps stage's outcome. A failed
    maps stage is raised once the processes have stopped."""
    import threading

    from .processes import map_in_processes

    out: dict = {}

    def draw() -> None:
        try:  # every pair of a process follows at once: one thread each
            out["drawn"] = map_in_processes(
                population_of, jobs, 1, "population", threads_each=None, take_warm=False
            )
        except BaseException as exc:  # noqa: BLE001 - raised in the stage's thread below
            out["error"] = exc

    thread = threading.Thread(target=draw, name="cytotune-population-follow", daemon=True)
    thread.start()
    try:
        maps_ready()
    except BaseException:
        write_ended(ended, False)
        thread.join()
        ended.unlink(missing_ok=True)
        raise
    state.mark("population/maps_ready")
    write_ended(ended, True, failed_maps(state))
    thread.join()
    ended.unlink(missing_ok=True)
    if "error" in out:
        raise out["error"]
    return out["drawn"]


def population_of(
    work: PopulationWork, trial_id: str, method: str, source, follow: FollowMaps | None = None
) -> list[dict] | None:
    """One (trial, method) map table: its geometric-mean maps per class, their files and
    summary rows; None where the table does not exist (the method failed on this trial). With
    ``follow``, the parts are added as the maps stage writes them."""
    sums = MapSums(work.classes, work.groups, work.hw, work.eps, work.regression)
    if follow is not None and not follow.follow(sums):
        return None  # the maps stage failed: the stage raises its error
    if not Path(source).exists():
        return None
    map_means = sums.results(source)
    rows: list[dict] = []
    for cls in work.classes:
        if cls not in map_means or cls not in work.shape_means:
            continue
        n = int((work.groups == cls).sum())
        rows += _write_class(
            work, trial_id, method, cls, work.shape_means[cls], map_means[cls][0], n
        )
    return rows


def _write_class(work: PopulationWork, trial_id, method, cls, image, cam, n) -> list[dict]:
    names = list(work.names)
    out = population_dir(work.study_dir, trial_id, method, cls)
    channels = [image[c] for c in range(image.shape[0])] + [image.mean(0)]
    labels = names + ["all"]
    results = [compare_population_maps(ch, cam, work.radius, work.threshold) for ch in channels]
    correlation = np.stack([r["r"] for r in results])  # (C + 1, H, W)
    _save_npy(out / "gmean_image.npy", image)
    _save_npy(out / "gmean_map.npy", cam)
    _save_npy(out / "correlation.npy", correlation)
    save_png(out / "gmean_image.png", overlay(image, None, channel_names=names), scale=4)
    # crop | geometric-mean map with its colour bar (units of the method, scaled to max 1)
    (out / "gmean_map.png").write_bytes(
        render_tile(image, cam[None], method, channel_names=names, percentile=100.0)
    )
    save_png(
        out / "correlation.png",
        with_bar(
            grid([diverging(r) for r in correlation], len(correlation)),
            DIVERGING_LUT,
            (-1.0, 1.0),
            "local Pearson r (map vs channel)",
            scale=4,
        ),
    )
    rel = lambda name: str((out / name).relative_to(work.study_dir))  # noqa: E731
    return [
        {
            "trial_id": trial_id,
            "method": method,
            "class": cls,
            "channel": label,
            "n": n,
            "positive_ratio": r["positive_ratio"],
            "negative_ratio": r["negative_ratio"],
            "mean_r": r["mean_r"],
            "gmean_image": rel("gmean_image.png"),
            "gmean_map": rel("gmean_map.png"),
            "correlation": rel("correlation.png"),
        }
        for label, r in zip(labels, results)
    ]
