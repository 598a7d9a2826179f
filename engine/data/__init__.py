"""Data layer: dataset contract, writer/reader, ingest, folds, streaming loader."""

from .dataset import CellDataset
from .schema import Manifest
from .writer import DatasetSpec, DatasetWriter

__all__ = ["CellDataset", "DatasetSpec", "DatasetWriter", "Manifest"]
