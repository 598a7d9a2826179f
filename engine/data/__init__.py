"""Data layer: dataset contract, writer/reader, ingest, folds, streaming loader."""

from __future__ import annotations

from cytotune.lazy import lazy_exports

# Exported name -> submodule; imported on first use so `cytotune COMMAND --help` skips pyarrow.
_EXPORTS = {
    "CellDataset": ".dataset",
    "DatasetSpec": ".writer",
    "DatasetWriter": ".writer",
    "Manifest": ".schema",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
