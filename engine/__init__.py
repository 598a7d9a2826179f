"""cytotune engine: data layer, training, search, results store, export and CLI."""

from cytotune import __version__

__all__ = ["__version__", "load_bundle"]


def __getattr__(name: str):
    """``cytotune.engine.load_bundle`` (also ``cytotune.load_bundle``) without importing torch."""
    if name == "load_bundle":
        from cytotune.engine.export.predict import load_bundle

        return load_bundle
    raise AttributeError(f"module 'cytotune.engine' has no attribute {name!r}")
