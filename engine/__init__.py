"""cytotune engine: data layer, training, search, results store, export and CLI."""

__version__ = "0.1.0"
