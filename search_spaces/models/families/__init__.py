"""Model families; importing this package registers them all."""

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
