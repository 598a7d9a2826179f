"""cytotune's declarative search spaces (YAML + typed parameters) and model configurations.
The models themselves live in :mod:`cytotune.search_spaces.models`.

>>> from cytotune.search_spaces import ModelConfig, load_space
>>> space = load_space("microtubule")
>>> config = ModelConfig.from_sample(space.default(), in_chans=4, task="binary")
"""

from . import models  # registers the families the spaces name
from .config import ModelConfig, TaskSpec
from .space import (
    CategoricalParam,
    FixedParam,
    FloatParam,
    IntParam,
    SearchSpace,
    SpaceError,
    list_spaces,
    load_space,
)

__all__ = [
    "CategoricalParam",
    "FixedParam",
    "FloatParam",
    "IntParam",
    "ModelConfig",
    "SearchSpace",
    "SpaceError",
    "TaskSpec",
    "list_spaces",
    "load_space",
    "models",
]
