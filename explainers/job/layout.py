"""Where the explain job writes inside a study directory (the dashboard and bundles read this).

::

    <study>/explain/
      explain.json                         the run: config, trials, finished parts, timings, status
      maps/<trial_id>/<method>.parquet/    one row per explained cell (MAP_COLUMNS); a directory
                                           of part files (read_maps / pandas.read_parquet)
      overlays/<trial_id>/<method>/<cell_id>.png   pseudo-colour overlays for a sample of cells
      overlays.parquet                     index of the overlays (OVERLAY_COLUMNS)
      population/<trial_id>/<method>/<class>/{gmean_image,gmean_map,correlation}.{npy,png}
          gmean_image (C, H, W), gmean_map (H, W), correlation (C + 1, H, W): per channel, then
          the channel mean; correlation.png shows the C + 1 panels left to right
      population.parquet                   one row per trial x method x class x channel
                                           (POPULATION_COLUMNS; paths relative to the study)
      quality.parquet                      one row per trial x method x metric (QUALITY_COLUMNS)
      prototypes/<trial_id>/fold_<k>/prototype_<j>.png   mosaic of the top training patches
      prototypes.parquet                   one row per prototype (PROTOTYPE_COLUMNS)
      attention/<trial_id>/<cell_id>.png   attention per channel pair (channel-attention families)
      attention.parquet                    index of the attention figures (ATTENTION_COLUMNS)

The five index tables (overlays, population, quality, prototypes, attention) have typed rows
(:data:`INDEX`, through :mod:`cytotune.engine.formats`) and a format version: ``write_frame``
checks and stamps them, ``read_index`` reads them back and refuses an older run's with the fix.
The map tables are not versioned yet (their columns are described by ``MAP_COLUMNS``).

Maps are float16, stored as raw bytes with their shape: ``(1, H, W)`` for CAM methods and
``(C, H, W)`` (one map per input channel) for gradient methods. Decode one with
:func:`decode_map`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from cytotune.engine import formats
from cytotune.engine.formats import TableFormat
from cytotune.engine.io import atomic_write_bytes, atomic_write_parquet

EXPLAIN_DIR = "explain"
STATE_FILE = "explain.json"

MAP_COLUMNS = {
    "cell_id": "string: the dataset's cell id",
    "trial_id": "string",
    "method": "string: registered explainer name",
    "fold": "int: the fold whose model explained the cell (it did not train on it for split=val)",
    "label": "string: true class name (classification) or '' (regression)",
    "label_index": "int: true class index, -1 for regression",
    "prediction": "string: predicted class name, or the predicted value as text (regression)",
    "prediction_index": "int: predicted class index, -1 for regression",
    "confidence": "float: probability of the predicted class (classification), NaN otherwise",
    "correct": "bool: prediction == label (classification), NaN-free False for regression",
    "target_index": "int: output explained (predicted class / regression target)",
    "true_value": "float: regression target of the explained output (NaN for classification)",
    "predicted_value": "float: regression prediction of the explained output (NaN otherwise)",
    "abs_error": "float: |predicted - true| (regression), NaN otherwise",
    "map": "binary: float16 bytes, C-order, shape map_shape",
    "map_shape": "list<int>: (channels, H, W)",
    "mass_cell": "float: share of positive attribution inside the cell mask (NaN without masks)",
    "mass_evidence": "float: share inside the synthetic evidence mask (NaN without one)",
    "pointing_hit": "float: 1/0 pointing game on the evidence mask (NaN without one)",
}
# The index tables (explain/<name>.parquet): typed rows, written through ``write_frame`` with
# their format version, read back with ``read_index`` (an older explain run is refused with the
# fix: run the explain job again with --overwrite).
INDEX_VERSION = 1
_FIX = (
    "upgrade it once with `cytotune upgrade STUDY_DIR` (or run `cytotune explain --study "
    "STUDY_DIR --overwrite` again to rewrite it)"
)


@dataclass
class OverlayRow:
    """A pseudo-colour overlay PNG of one explained cell."""

    trial_id: str
    method: str
    cell_id: str
    path: str  # relative to the study directory
    label: str | None = None
    prediction: str | None = None
    correct: bool | None = None


@dataclass
class PopulationRow:
    """Population maps of one trial x method x class x channel (paths relative to the study)."""

    trial_id: str
    method: str
    cls: str = field(metadata={"column": "class"})
    channel: str  # a channel name, or "all" for the channel mean of Gmean-Shape
    n: int | None = None
    positive_ratio: float | None = None
    negative_ratio: float | None = None
    mean_r: float | None = None
    gmean_image: str | None = None
    gmean_map: str | None = None
    correlation: str | None = None


@dataclass
class QualityRow:
    """One quality metric of a trial x method (mean and std over the scored cells)."""

    trial_id: str
    method: str
    metric: str
    mean: float | None = None
    std: float | None = None
    n: int | None = None


@dataclass
class PrototypeRow:
    """One prototype of a fold model: its mosaic of the closest training patches."""

    trial_id: str
    fold: int
    prototype: int
    cls: int = field(metadata={"column": "class"})  # the class index the prototype belongs to
    path: str  # relative to the study directory
    duplicate_of: int = -1  # another prototype of the same patches, -1: none
    receptive_field: int | None = None
    top_distance: float | None = None


@dataclass
class AttentionRow:
    """The attention figure of one cell (channel-attention families)."""

    trial_id: str
    cell_id: str
    path: str  # relative to the study directory
    pairs: list[str] | None = None  # channel pairs shown, "dna-actin"


INDEX = {
    name: TableFormat(name, row, version=INDEX_VERSION, fix=_FIX)
    for name, row in (
        ("overlays", OverlayRow),
        ("population", PopulationRow),
        ("quality", QualityRow),
        ("prototypes", PrototypeRow),
        ("attention", AttentionRow),
    )
}
OVERLAY_COLUMNS = tuple(INDEX["overlays"].fields)
POPULATION_COLUMNS = tuple(INDEX["population"].fields)
QUALITY_COLUMNS = tuple(INDEX["quality"].fields)
PROTOTYPE_COLUMNS = tuple(INDEX["prototypes"].fields)
ATTENTION_COLUMNS = tuple(INDEX["attention"].fields)


def explain_dir(study_dir: str | Path) -> Path:
    return Path(study_dir) / EXPLAIN_DIR


def maps_path(study_dir: str | Path, trial_id: str, method: str) -> Path:
    """The map table of (trial, method): a Parquet dataset directory of part files (the
    explain actors write in parallel); :func:`read_maps` also reads a single file here."""
    return explain_dir(study_dir) / "maps" / trial_id / f"{method}.parquet"


def maps_staging_dir(study_dir: str | Path, trial_id: str, method: str, run_id: str) -> Path:
    """Where one run's actors write a map table before it is renamed to :func:`maps_path`."""
    return explain_dir(study_dir) / "maps" / trial_id / f".{method}.{run_id}.tmp"


def read_maps(path: str | Path, columns: list[str] | None = None):
    """A map table (directory of parts or single file) as one Arrow table."""
    import pyarrow.dataset as ds

    return ds.dataset(str(path), format="parquet").to_table(columns=columns)


def maps_schema(path: str | Path):
    """Column names and types of a map table, without reading its rows."""
    import pyarrow.dataset as ds

    return ds.dataset(str(path), format="parquet").schema


def iter_maps(path: str | Path, columns: list[str] | None = None, batch_size: int = 2048):
    """Arrow record batches of a map table, streaming (a whole table need not fit in memory)."""
    import pyarrow.dataset as ds

    return ds.dataset(str(path), format="parquet").to_batches(
        columns=columns, batch_size=batch_size
    )


def overlay_path(study_dir: str | Path, trial_id: str, method: str, cell_id: str) -> Path:
    return explain_dir(study_dir) / "overlays" / trial_id / method / f"{safe_name(cell_id)}.png"


def population_dir(study_dir: str | Path, trial_id: str, method: str, cls: str) -> Path:
    return explain_dir(study_dir) / "population" / trial_id / method / safe_name(cls)


def prototype_path(study_dir: str | Path, trial_id: str, fold: int, prototype: int) -> Path:
    return (
        explain_dir(study_dir)
        / "prototypes"
        / trial_id
        / f"fold_{fold}"
        / f"prototype_{prototype}.png"
    )


def attention_path(study_dir: str | Path, trial_id: str, cell_id: str) -> Path:
    return explain_dir(study_dir) / "attention" / trial_id / f"{safe_name(cell_id)}.png"


def safe_name(name: str) -> str:
    """A file name for a cell id or class name (path separators and odd characters replaced)."""
    keep = "-_.+="
    out = "".join(c if c.isalnum() or c in keep else "_" for c in str(name))
    return out.lstrip(".") or "_"


def decode_map(data: bytes, shape) -> np.ndarray:
    """One stored map as a float32 array of ``shape`` (C, H, W)."""
    return (
        np.frombuffer(data, dtype=np.float16)
        .reshape(tuple(int(s) for s in shape))
        .astype(np.float32)
    )


def write_frame(frame, path: str | Path) -> Path:
    """Write a DataFrame as Parquet through a temporary name and a rename (readers never see a
    half-written table); an index table (``explain/<name>.parquet`` of :data:`INDEX`) is checked
    against its row type and stamped with its format version."""
    path = Path(path)
    fmt = INDEX.get(path.stem) if path.parent.name == EXPLAIN_DIR else None
    if fmt is None:
        return atomic_write_parquet(frame, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, formats.write(fmt, frame))
    return path


def empty_index(name: str) -> pd.DataFrame:
    """Index table ``name`` with no rows (every column, typed)."""
    return formats.empty(INDEX[name])


def read_index(study_dir: str | Path, name: str) -> pd.DataFrame:
    """An index table (:data:`INDEX`) with every column (no rows when the job has not written
    it); FormatError, naming the fix, for one from an older explain run."""
    if name not in INDEX:
        raise ValueError(f"explain index table {name!r} is not one of {tuple(INDEX)}")
    path = explain_dir(study_dir) / f"{name}.parquet"
    if not path.is_file():
        return empty_index(name)
    return formats.read(INDEX[name], path, where=str(path))


def upgrade_index(study_dir: str | Path) -> list[str]:
    """Rewrite index tables written before format versions in this one; returns the paths
    rewritten (none when every table is current). FormatError for a table of another version."""
    done = []
    for name, fmt in INDEX.items():
        path = explain_dir(study_dir) / f"{name}.parquet"
        if not path.is_file():
            continue
        data = path.read_bytes()
        upgraded = formats.upgrade(fmt, data)
        if upgraded is not data:
            atomic_write_bytes(path, upgraded)
            done.append(str(path))
    return done
