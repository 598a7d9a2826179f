"""Model families, one module each; importing this package registers them all.

Every module here whose name does not start with ``_`` is imported, so a new family is one new
file (plus its search space); the names below are re-exported for convenience.
"""

import importlib
import pkgutil

from .attention import ChannelAttentionArgs, ChannelAttentionNet, MHLAttentionArgs, MHLAttentionNet
from .backbone import BackboneArgs, BackboneModel
from .protopnet import ProtoPNet, ProtoPNetArgs, PrototypeSchedule, PrototypeSource
from .small_cnn import SmallCNN, SmallCNNArgs

__all__ = [
    "BackboneArgs",
    "BackboneModel",
    "ChannelAttentionArgs",
    "ChannelAttentionNet",
    "MHLAttentionArgs",
    "MHLAttentionNet",
    "PrototypeSchedule",
    "PrototypeSource",
    "ProtoPNet",
    "ProtoPNetArgs",
    "SmallCNN",
    "SmallCNNArgs",
]

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
