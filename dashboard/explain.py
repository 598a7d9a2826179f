"""Read side of a study's ``explain/`` directory (layout: :mod:`cytotune.explainers.job.layout`).

Overlays are re-rendered on request from the stored float16 map and the dataset crop, so the
page can switch channels, colormap and alpha; when the dataset is not reachable from here the
map alone is drawn (and the job's own overlay PNG is still served as a file).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from cytotune.engine.formats import FormatError
from cytotune.explainers.job import layout
from cytotune.explainers.job.tiles import MAP_COLORMAPS as COLORMAPS  # noqa: F401  (the page's choices)

from .data import CACHE, Study, StudyUnreadable, _signature

_MAP_TABLES: OrderedDict[tuple, tuple] = OrderedDict()
_CROPS: OrderedDict[tuple, np.ndarray] = OrderedDict()
_PNGS: OrderedDict[tuple, bytes] = OrderedDict()  # rendered overlays, least recently used first
_PNGS_MAX = 4096  # tiles of 5-20 kB: at most about 80 MB
_LOCK = threading.Lock()


def _read(path: Path, key: str, columns=None) -> pd.DataFrame:
    if not path.exists():
        return pd.DataFrame()
    if path.is_dir():  # map tables are directories of parts (explainers.job.layout.maps_path)
        return CACHE.get(path, key, lambda: layout.read_maps(path, columns).to_pandas())
    return CACHE.get(path, key, lambda: pq.read_table(path, columns=columns).to_pandas())


class Explanations:
    """What the explain job wrote for one study."""

    def __init__(self, study: Study) -> None:
        self.study = study
        self.root = layout.explain_dir(study.path)

    def available(self) -> bool:
        return self.root.is_dir()

    def state(self) -> dict:
        target = self.root / layout.STATE_FILE
        if not target.is_file():
            return {}
        try:
            return CACHE.get(target, "json", lambda: json.loads(target.read_text()))
        except ValueError:
            return {}

    def methods(self) -> dict[str, list[str]]:
        """trial_id -> methods with a maps table."""
        out: dict[str, list[str]] = {}
        maps = self.root / "maps"
        if maps.is_dir():
            for trial in sorted(p for p in maps.iterdir() if p.is_dir()):
                names = sorted(p.stem for p in trial.glob("*.parquet"))
                if names:
                    out[trial.name] = names
        return out

    def cells(self, trial_id: str, method: str) -> pd.DataFrame:
        """Every explained cell of (trial, method), without the map bytes."""
        path = layout.maps_path(self.study.path, trial_id, method)
        if not path.exists():
            return pd.DataFrame()
        names = [c for c in layout.maps_schema(path).names if c != "map"]
        return _read(path, "cells", names)

    def map(self, trial_id: str, method: str, cell_id: str) -> np.ndarray:
        """The stored map of one cell as float32 (C, H, W), at the crop's size."""
        path = layout.maps_path(self.study.path, trial_id, method)
        key = (str(path), *(path.stat().st_mtime_ns, path.stat().st_size))
        with _LOCK:
            hit = _MAP_TABLES.get(key)
        if hit is None:
            frame = layout.read_maps(path, ["cell_id", "map", "map_shape"]).to_pandas()
            hit = (dict(zip(frame["cell_id"].astype(str), range(len(frame)))), frame)
            with _LOCK:
                _MAP_TABLES[key] = hit
                while len(_MAP_TABLES) > 4:
                    _MAP_TABLES.popitem(last=False)
        index, frame = hit
        if cell_id not in index:
            raise KeyError(f"cell {cell_id!r} has no {method} map for trial {trial_id}")
        row = frame.iloc[index[cell_id]]
        shape = self.study.manifest().get("shape")  # (C, H, W): a CAM is stored at its layer's size
        return layout.decode_map(row["map"], row["map_shape"], shape[-2:] if shape else None)

    # -- crops -------------------------------------------------------------------------------
    def channel_names(self) -> list[str]:
        return list(self.study.manifest().get("channel_names") or [])

    def prefetch(self, cell_ids) -> None:
        """Read the crops of ``cell_ids`` from the dataset in one pass (cached)."""
        path = self.study.dataset_path()
        if path is None or not (path / "manifest.json").is_file():
            return
        missing = [c for c in cell_ids if (str(path), str(c)) not in _CROPS]
        if not missing:
            return
        try:
            import pyarrow.compute as pc
            import pyarrow.dataset as pads
            from cytotune.engine.data.dataset import CellDataset
            from cytotune.engine.data.schema import decode_images

            dataset = CellDataset(path)
            # only the wanted rows are kept (row groups pruned by cell_id statistics where possible)
            table = pads.dataset(dataset.shard_paths, format="parquet").to_table(
                columns=["cell_id", "image"],
                filter=pc.field("cell_id").isin([str(c) for c in missing]),
            )
            images = decode_images(
                table.column("image"), dataset.manifest.dtype, dataset.manifest.shape
            )
        except (OSError, ValueError, KeyError, pa.ArrowException):
            return
        with _LOCK:
            for cell, image in zip(table.column("cell_id").to_pylist(), images):
                _CROPS[(str(path), str(cell))] = image
            while len(_CROPS) > 4096:
                _CROPS.popitem(last=False)

    def crop(self, cell_id: str) -> np.ndarray | None:
        path = self.study.dataset_path()
        if path is None:
            return None
        self.prefetch([cell_id])
        return _CROPS.get((str(path), str(cell_id)))

    def render(
        self,
        trial_id,
        method,
        cell_id,
        channels=None,
        cmap="auto",
        alpha=0.6,
        mode="side",
        percentile=99.5,
        smooth=0.0,
    ) -> bytes:
        """PNG of one cell (explainers.job.tiles.render_tile): crop | map, blend or contours, with
        a colour bar in the method's units. Drawn once per version of the map table and view
        (every client of a page asks for the same tiles), then served from memory."""
        from cytotune.explainers.job.tiles import render_tile

        path = layout.maps_path(self.study.path, trial_id, method)
        view = (tuple(channels or ()), cmap, alpha, mode, percentile, smooth)
        key = (str(path), _signature(path), str(self.study.dataset_path()), str(cell_id), view)
        with _LOCK:
            png = _PNGS.get(key)
            if png is not None:
                _PNGS.move_to_end(key)
                return png
        amap = self.map(trial_id, method, cell_id)  # (C, H, W) or (1, H, W)
        png = render_tile(
            self.crop(cell_id),
            amap,
            method,
            channels=channels,
            channel_names=self.channel_names() or None,
            cmap=cmap,
            alpha=alpha,
            mode=mode,
            percentile=percentile,
            smooth=smooth,
        )
        with _LOCK:
            _PNGS[key] = png
            _PNGS.move_to_end(key)
            while len(_PNGS) > _PNGS_MAX:
                _PNGS.popitem(last=False)
        return png

    # -- population, prototypes, attention, quality --------------------------------------------
    def table(self, name: str) -> pd.DataFrame:
        """An index table (explainers.job.layout.INDEX), typed; StudyUnreadable with the fix for
        one an older explain run wrote."""
        try:
            return CACHE.get(
                self.root / f"{name}.parquet",
                "index",
                lambda: layout.read_index(self.study.path, name),
            )
        except FormatError as exc:
            raise StudyUnreadable(str(exc)) from None

    def population_images(self, trial_id: str, method: str) -> list[dict]:
        """Per class: n, per-channel positive/negative shares and the three PNGs (study-relative)."""
        frame = self.table("population")
        if frame.empty or "trial_id" not in frame:
            return []
        frame = frame[
            (frame["trial_id"].astype(str) == str(trial_id)) & (frame["method"] == method)
        ]
        out = []
        for cls, group in frame.groupby("class", sort=True):
            first = group.iloc[0]
            folder = layout.population_dir(self.study.path, trial_id, method, str(cls))
            files = {}
            for key in ("gmean_image", "gmean_map", "correlation"):
                stored = first.get(key)
                candidates = [folder / f"{key}.png"]
                if isinstance(stored, str) and stored.endswith(".png"):
                    candidates.insert(0, self.study.path / stored)
                files[key] = next((r for r in map(self.relative, candidates) if r), None)
            channels = [
                {k: r.get(k) for k in ("channel", "positive_ratio", "negative_ratio", "mean_r")}
                for r in group.to_dict("records")
            ]
            out.append({"class": str(cls), "n": first.get("n"), "channels": channels, **files})
        return out

    def relative(self, path: Path) -> str | None:
        """``path`` relative to the study directory when it is a file inside it."""
        try:
            path = path.resolve()
            return path.relative_to(self.study.path).as_posix() if path.is_file() else None
        except (ValueError, OSError):
            return None


def filter_cells(
    cells: pd.DataFrame,
    true_class=None,
    predicted=None,
    outcome: str = "all",
    confidence=(0.0, 1.0),
    error=None,
) -> pd.DataFrame:
    """Cells matching the Explanations page's filters (None / "all" = no filter)."""
    if cells.empty:
        return cells
    mask = np.ones(len(cells), dtype=bool)
    if true_class:
        mask &= (
            cells["label"]
            .astype(str)
            .isin([true_class] if isinstance(true_class, str) else true_class)
            .to_numpy()
        )
    if predicted:
        mask &= (
            cells["prediction"]
            .astype(str)
            .isin([predicted] if isinstance(predicted, str) else predicted)
            .to_numpy()
        )
    if outcome in ("correct", "wrong") and "correct" in cells:
        correct = cells["correct"].fillna(False).astype(bool).to_numpy()
        mask &= correct if outcome == "correct" else ~correct
    if confidence is not None and "confidence" in cells and cells["confidence"].notna().any():
        lo, hi = confidence
        conf = cells["confidence"].to_numpy(dtype=float)
        mask &= (conf >= lo - 1e-9) & (conf <= hi + 1e-9)
    if error is not None and "abs_error" in cells and cells["abs_error"].notna().any():
        lo, hi = error
        err = cells["abs_error"].to_numpy(dtype=float)
        mask &= (err >= lo - 1e-9) & (err <= hi + 1e-9)
    return cells[mask]
