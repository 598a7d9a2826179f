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

Maps are float16, stored as raw bytes with their shape: ``(1, H, W)`` for CAM methods and
``(C, H, W)`` (one map per input channel) for gradient methods. Decode one with
:func:`decode_map`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from cytotune.engine.io import atomic_write_parquet

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
OVERLAY_COLUMNS = ("trial_id", "method", "cell_id", "path", "label", "prediction", "correct")
POPULATION_COLUMNS = (
    "trial_id",
    "method",
    "class",
    "channel",  # a channel name, or "all" for the channel mean of Gmean-Shape
    "n",
    "positive_ratio",
    "negative_ratio",
    "mean_r",
    "gmean_image",
    "gmean_map",
    "correlation",
)
QUALITY_COLUMNS = ("trial_id", "method", "metric", "mean", "std", "n")
PROTOTYPE_COLUMNS = ("trial_id", "fold", "prototype", "class", "path", "duplicate_of")
ATTENTION_COLUMNS = ("trial_id", "cell_id", "path", "pairs")


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
    half-written table)."""
    return atomic_write_parquet(frame, path)
