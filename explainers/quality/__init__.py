"""Explanation quality scores: faithfulness, localisation, randomisation (and the sanity check
built on it), prototype diversity.

Pure numpy/torch functions over maps, masks and callables; the explain job calls them per model
and method and writes the results as quality tables.
"""

from .faithfulness import deletion_insertion, make_baseline
from .localisation import mass_inside, pointing_game
from .prototypes import prototype_diversity
from .randomisation import randomisation_check, randomizable_layers, randomize_weights, ssim
from .sanity import CALIBRATED_THRESHOLD, SanityConfig, SanityResult, sanity_check

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
