"""Where the explain job writes inside a study directory (the dashboard and bundles read this).

::

    <study>/explain/
      explain.json                         the run: config, trials, finished parts, timings, status
      maps/<trial_id>/<method>.parquet/    one row per explained cell (MapRow); a directory of
                                           part files (write_maps writes each, read_maps reads)
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
The map tables likewise (:data:`MAPS`, :class:`MapRow`): ``write_maps`` writes each file (a
part of the directory the actors write), ``read_maps`` / ``iter_maps`` / ``maps_schema`` check
every file's version. ``cytotune upgrade STUDY_DIR`` (:func:`upgrade_explain`) rewrites the
tables of a run from before format versions.

Maps are float16, stored as raw bytes with their shape: ``(1, h, w)`` for CAM methods at the
resolution of their layer (a 7x7 Grad-CAM of a 224 px crop is 98 bytes instead of 100 kB;
upsampled to the crop where it is read), ``(1, H, W)`` for fused or smoothed CAMs and
``(C, H, W)`` (one map per input channel) for gradient methods. Decode one with
:func:`decode_map` and the crop's size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from cytotune.engine import formats
from cytotune.engine.formats import TableFormat
from cytotune.engine.io import atomic_path, atomic_write_bytes, atomic_write_parquet

EXPLAIN_DIR = "explain"
STATE_FILE = "explain.json"

# The map and index tables: typed rows, written (``write_maps``, ``write_frame``) with their
# format version, read back (``read_maps``, ``read_index``); an older explain run's are refused
# with the fix.
INDEX_VERSION = 1
_FIX = (
    "upgrade it once with `cytotune upgrade STUDY_DIR` (or run `cytotune explain --study "
    "STUDY_DIR --overwrite` again to rewrite it)"
)
I32, F32 = {"arrow": pa.int32()}, {"arrow": pa.float32()}


@dataclass
class MapRow:
    """One explained cell and output (class or regression target) of a map table.

    ``map`` is float16 bytes, C-order, of shape ``map_shape`` (channels, h, w: a CAM at its
    layer's resolution, else the crop's); see :func:`decode_map`.
    """

    cell_id: str  # the dataset's cell id
    trial_id: str
    method: str  # registered explainer name
    fold: int | None = field(default=None, metadata=I32)  # the fold whose model explained it
    label: str | None = None  # true class name (classification) or the target (regression)
    label_index: int | None = field(default=None, metadata=I32)  # -1 for regression
    prediction: str | None = None  # predicted class name, or the value as text (regression)
    prediction_index: int | None = field(default=None, metadata=I32)  # -1 for regression
    confidence: float | None = field(default=None, metadata=F32)  # probability of prediction
    correct: bool | None = None  # prediction == label (always False for regression)
    target_index: int | None = field(default=None, metadata=I32)  # output explained
    true_value: float | None = field(default=None, metadata=F32)  # regression target
    predicted_value: float | None = field(default=None, metadata=F32)  # regression prediction
    abs_error: float | None = field(default=None, metadata=F32)  # |predicted - true|
    map: bytes | None = None
    map_shape: list[int] | None = field(default=None, metadata={"arrow": pa.list_(pa.int32())})
    mass_cell: float | None = field(default=None, metadata=F32)  # positive share in the mask
    mass_evidence: float | None = field(default=None, metadata=F32)  # in the evidence mask
    pointing_hit: float | None = field(default=None, metadata=F32)  # 1/0 pointing game
    seconds: float | None = field(default=None, metadata=F32)  # explain time per cell


MAPS = TableFormat("maps", MapRow, ("cell_id", "target_index"), (), INDEX_VERSION, _FIX)
MAP_COLUMNS = tuple(MAPS.fields)


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


def write_maps(rows: pa.Table | pd.DataFrame, path: str | Path) -> Path:
    """Write map rows (:class:`MapRow` columns) as one Parquet file of the maps format,
    atomically: a part of a map table's directory, or a whole table as a single file. A column
    the format lacks, or a value of the wrong type, raises FormatError here."""
    if isinstance(rows, pd.DataFrame):
        rows = pa.Table.from_pandas(rows, preserve_index=False)
    table = formats.conform(MAPS, rows)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="lz4")
    return Path(path)


def _maps_dataset(path: str | Path):
    """The map table at ``path`` as a pyarrow dataset, every file's format version checked
    (FormatError, naming the fix, for a table of an older explain run)."""
    import pyarrow.dataset as ds

    dataset = ds.dataset(str(path), format="parquet")
    for fragment in dataset.get_fragments():
        formats.check_version(MAPS, fragment.physical_schema, fragment.path)
    return dataset


def read_maps(path: str | Path, columns: list[str] | None = None, filter=None) -> pa.Table:
    """A map table (directory of parts or single file) as one Arrow table (its rows matching
    ``filter``, a pyarrow dataset expression, when given)."""
    return _maps_dataset(path).to_table(columns=columns, filter=filter)


def maps_schema(path: str | Path) -> pa.Schema:
    """Column names and types of a map table, without reading its rows."""
    return _maps_dataset(path).schema


def iter_maps(path: str | Path, columns: list[str] | None = None, batch_size: int = 2048):
    """Arrow record batches of a map table, streaming (a whole table need not fit in memory)."""
    return _maps_dataset(path).to_batches(columns=columns, batch_size=batch_size)


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


def decode_map(data: bytes, shape, size=None) -> np.ndarray:
    """One stored map as a float32 array of ``shape`` (C, H, W); with ``size`` (the crop's
    (H, W)), a CAM stored at its layer's resolution is upsampled to it as the explainer does
    (:func:`upsample_bilinear`)."""
    out = finite_maps(
        np.frombuffer(data, dtype=np.float16)
        .reshape(tuple(int(s) for s in shape))
        .astype(np.float32)
    )
    return out if size is None else upsample_bilinear(out, size)


def finite_maps(maps: np.ndarray) -> np.ndarray:
    """Stored maps with no inf or NaN: map tables written before maps were scaled into float16's
    range hold inf where a value passed 65504 (read: that maximum) and NaN where inf met inf."""
    return np.nan_to_num(maps, nan=0.0, posinf=65504.0, neginf=-65504.0)


def upsample_bilinear(maps: np.ndarray, size) -> np.ndarray:
    """``maps`` (..., h, w) resized to ``size`` (H, W) on their last two axes exactly as
    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` does (pixel
    centres aligned, edges clamped), in numpy (the dashboard reads maps without torch). Maps
    already of ``size`` come back as they are."""
    height, width = (int(v) for v in size)
    h, w = maps.shape[-2:]
    if (h, w) == (height, width):
        return maps

    def axis(n_in: int, n_out: int):
        src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        low = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        high = np.minimum(low + 1, n_in - 1)
        return low, high, (src - low).astype(np.float32)

    y0, y1, fy = axis(h, height)
    x0, x1, fx = axis(w, width)
    rows = maps[..., y0, :] * (1 - fy)[:, None] + maps[..., y1, :] * fy[:, None]  # (..., H, w)
    return (rows[..., x0] * (1 - fx) + rows[..., x1] * fx).astype(np.float32)


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


def upgrade_explain(study_dir: str | Path) -> list[str]:
    """Rewrite the explain run's index and map tables written before format versions in this
    one; returns the paths rewritten (none when every table is current). FormatError for a
    table of another version."""
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
    for table in sorted((explain_dir(study_dir) / "maps").glob("*/*.parquet")):
        files = sorted(table.glob("*.parquet")) if table.is_dir() else [table]
        old = [f for f in files if not _current(pq.read_schema(f), f)]
        for part in old:
            write_maps(pq.read_table(part), part)
        if old:
            done.append(str(table))
    return done


def _current(schema: pa.Schema, path: Path) -> bool:
    """Whether a map file is of this format version; False for one from before versions,
    FormatError for any other."""
    if formats.VERSION_KEY not in (schema.metadata or {}):
        return False
    formats.check_version(MAPS, schema, str(path))
    return True
