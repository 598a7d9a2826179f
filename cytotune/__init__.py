"""cytotune: distributed AutoML and explanations for single-cell microscopy images.

One import namespace over the folders the design card fixes (pyproject's ``package-dir``):

- ``cytotune.engine``: data (ingest, Parquet, Ray Data, folds), training, search, results
  store, export and the CLI;
- ``cytotune.search_spaces``: declarative search spaces; ``cytotune.search_spaces.models``:
  the models (``CytoModel``, task heads, the families and their registry);
- ``cytotune.explainers``: attribution methods, quality scores and the explain job;
- ``cytotune.dashboard``: the Dash leaderboard.

>>> import cytotune
>>> bundle = cytotune.load_bundle("bundles/champion")
"""

from pathlib import Path

__version__ = "0.1.0"

# A source checkout run without installing (PYTHONPATH=the checkout): the subpackages sit next to
# this folder, not in it. Installed (wheel or editable), pyproject's package-dir maps them.
_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "engine" / "__init__.py").is_file():
    __path__.append(str(_checkout))


def __getattr__(name: str):
    """``cytotune.load_bundle`` without importing torch at ``import cytotune``."""
    if name == "load_bundle":
        from cytotune.engine.export.predict import load_bundle

        return load_bundle
    raise AttributeError(f"module 'cytotune' has no attribute {name!r}")
