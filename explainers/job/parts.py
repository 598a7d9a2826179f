"""Map part files: written once per batch, whatever Ray Data runs twice.

The explain actors write each batch's map rows of one (trial, method) as a Parquet part into the
run's staging directory. When an actor's node is lost, Ray Data restarts the actor and runs its
unfinished batches again, some of which had already written their parts. So a part is named by
its content (the batch's cell ids, folds and explained outputs) and written under a temporary
name and renamed: a batch run twice replaces its own part, atomically, instead of adding a
second one. :func:`finish_parts` then checks, before the staging directory is published, that
every (cell, output) is stored once (a batch cut differently on its second run would
overlap its first), keeping the first copy.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .layout import MAPS, write_maps

# a map row is one cell explained for one output (class or regression target)
KEY = MAPS.key


def part_name(table: pa.Table) -> str:
    """The part file name of a batch's map rows: a digest of their cells, folds and outputs."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update("\x1f".join(table.column("cell_id").to_pylist()).encode())
    for column in ("fold", "target_index"):
        values = table.column(column).fill_null(-1).to_numpy(zero_copy_only=False)
        digest.update(np.ascontiguousarray(values, dtype=np.int64).tobytes())
    return f"part-{digest.hexdigest()}.parquet"


def write_part(table: pa.Table, directory: str | Path) -> Path:
    """Write ``table`` as the part :func:`part_name` names in ``directory``, in the maps format,
    atomically (the temporary file is hidden from Parquet dataset readers by its leading dot)."""
    return write_maps(table, Path(directory) / part_name(table))


def finish_parts(directory: str | Path) -> int:
    """Make a staging directory's parts hold every (cell, output) once; returns its rows.

    Leftover temporary files (a writer that died mid-write) are removed; a part whose rows are
    all stored in an earlier part (in name order) is removed, one that overlaps partly is
    rewritten without the repeated rows. Only the key columns are read unless rows repeat.
    """
    directory = Path(directory)
    for tmp in directory.glob(".*"):  # hidden: only temporary files of writers that died
        tmp.unlink(missing_ok=True)
    seen: set[tuple] = set()
    rows = 0
    for path in sorted(directory.glob("*.parquet")):
        keys = pq.read_table(path, columns=list(KEY))
        pairs = list(zip(*(keys.column(k).to_pylist() for k in KEY), strict=True))
        repeated = np.fromiter((p in seen for p in pairs), bool, len(pairs))
        if repeated.all() and len(pairs):
            path.unlink()
            continue
        if repeated.any():
            table = pq.read_table(path).filter(pa.array(~repeated))
            pairs = [p for p, r in zip(pairs, repeated, strict=True) if not r]
            write_part(table, directory)
            path.unlink()  # a new name: the rows it keeps are another content
        seen.update(pairs)
        rows += len(pairs)
    return rows
