"""Explanation quality scores: faithfulness, localisation, randomisation, prototype diversity.

Pure numpy/torch functions over maps, masks and callables; the explain job calls them per model
and method and writes the results as quality tables.
"""

from .faithfulness import deletion_insertion, make_baseline
from .localisation import mass_inside, pointing_game
from .prototypes import prototype_diversity
from .randomisation import randomisation_check, randomizable_layers, randomize_weights, ssim

__all__ = [
    "deletion_insertion",
    "make_baseline",
    "mass_inside",
    "pointing_game",
    "prototype_diversity",
    "randomisation_check",
    "randomizable_layers",
    "randomize_weights",
    "ssim",
]
