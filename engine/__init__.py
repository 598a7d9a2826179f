"""cytotune engine: data layer, training, search, results store, export and CLI."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``engine.load_bundle`` without importing torch at ``import engine``."""
    if name == "load_bundle":
        from engine.export.predict import load_bundle

        return load_bundle
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
