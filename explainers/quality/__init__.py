"""Explanation quality scores: faithfulness, localisation, randomisation (and the sanity check
built on it), prototype diversity.

Pure numpy/torch functions over maps, masks and callables; the explain job calls them per model
and method and writes the results as quality tables.
"""

from __future__ import annotations

from cytotune.lazy import lazy_exports

# Exported name -> submodule, imported on first use (the torch-free parts, e.g. the verdict
# constants in .verdicts and the model verdict in .learned, load without torch).
_EXPORTS = {
    "deletion_insertion": ".faithfulness",
    "make_baseline": ".faithfulness",
    "mass_inside": ".localisation",
    "pointing_game": ".localisation",
    "prototype_diversity": ".prototypes",
    "randomisation_check": ".randomisation",
    "randomizable_layers": ".randomisation",
    "randomize_weights": ".randomisation",
    "ssim": ".randomisation",
    "CALIBRATED_THRESHOLD": ".sanity",
    "SanityConfig": ".sanity",
    "SanityResult": ".sanity",
    "sanity_check": ".sanity",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


__all__ = [
    "CALIBRATED_THRESHOLD",
    "SanityConfig",
    "SanityResult",
    "deletion_insertion",
    "make_baseline",
    "mass_inside",
    "pointing_game",
    "prototype_diversity",
    "randomisation_check",
    "randomizable_layers",
    "randomize_weights",
    "sanity_check",
    "ssim",
]
