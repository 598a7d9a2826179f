"""cytotune model families and their declarative search spaces.

>>> from search_spaces import create_model, list_models, load_space
>>> list_models("*attention")
['channel_attention', 'mhl_attention']
>>> model = create_model("small_cnn", in_chans=4, task="multiclass", num_outputs=3)
>>> space = load_space("microtubule")
>>> config = ModelConfig.from_sample(space.default(), in_chans=4, task="binary")
"""

from . import families
from ._registry import create_model, family_args, get_family, list_models, register_family
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
from .tasks import CytoModel, LossOutput, TaskHead, r2_score, task_loss, task_metrics, task_score

__all__ = [
    "CategoricalParam",
    "FixedParam",
    "FloatParam",
    "IntParam",
    "SearchSpace",
    "SpaceError",
    "list_spaces",
    "load_space",
    "CytoModel",
    "LossOutput",
    "ModelConfig",
    "TaskHead",
    "TaskSpec",
    "create_model",
    "families",
    "family_args",
    "get_family",
    "list_models",
    "r2_score",
    "register_family",
    "task_loss",
    "task_metrics",
    "task_score",
]
