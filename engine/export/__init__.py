"""Bundles: a trial's model as a self-contained directory, aliases per study, ``cytotune pull``.

>>> import cytotune
>>> bundle = cytotune.load_bundle("bundles/champion")
>>> bundle.predict(crops)  # pandas DataFrame: prediction, confidence, p(<class>) ...

Modules: ``ensemble`` (the deployable model), ``formats`` (state_dict / torchscript / onnx),
``bundle`` (write, validate, rebuild), ``predict`` (:class:`Bundle`), ``source`` (trial selection,
metrics, provenance), ``pull`` (trial -> bundle), ``card`` (model card), ``aliases`` (registry),
``command`` (the CLI).
"""

from __future__ import annotations

from typing import Any

__all__ = ["Bundle", "BundleError", "load_bundle"]


def __getattr__(name: str) -> Any:
    if name in ("Bundle", "load_bundle"):
        from . import predict

        return getattr(predict, name)
    if name == "BundleError":
        from .bundle import BundleError

        return BundleError
    raise AttributeError(f"module 'cytotune.engine.export' has no attribute {name!r}")
