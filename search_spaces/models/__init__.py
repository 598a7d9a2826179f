"""cytotune's models: ``CytoModel`` (the interface every family implements), task heads and
losses, the model families and their registry.

>>> from cytotune.search_spaces.models import create_model, list_models
>>> list_models("*attention")
['channel_attention', 'mhl_attention']
>>> model = create_model("small_cnn", in_chans=4, task="multiclass", num_outputs=3)
"""

from . import families
from .registry import create_model, family_args, get_family, list_models, register_family
from .tasks import (
    Capabilities,
    CytoModel,
    LossOutput,
    TaskHead,
    capabilities_of,
    r2_score,
    task_loss,
    task_metrics,
    task_score,
)

__all__ = [
    "Capabilities",
    "CytoModel",
    "LossOutput",
    "TaskHead",
    "capabilities_of",
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
