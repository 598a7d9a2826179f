"""Data layer: dataset contract, writer/reader, ingest, folds, streaming loader."""

from __future__ import annotations

import importlib
from typing import Any

# Exported name -> submodule; imported on first use so `cytotune COMMAND --help` skips pyarrow.
_EXPORTS = {
    "CellDataset": ".dataset",
    "DatasetSpec": ".writer",
    "DatasetWriter": ".writer",
    "Manifest": ".schema",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
