"""Reusable stateful parts: heads (and the multi-crop wrapper), weight loading, key queues and
momentum encoders (MoCo), the prototype bank (ReKD), stage connectors (FitNets' regressors).
Teachers: ``distill.teachers``."""

from distill.modules.connectors import Connector, StageConnectors
from distill.modules.heads import Classifier, MultiCropWrapper, backbone_features
from distill.modules.momentum_encoder import MomentumEncoder
from distill.modules.prototypes import PrototypeBank
from distill.modules.queue import KeyQueue
from distill.modules.weights import load_weights

__all__ = [
    "Classifier",
    "Connector",
    "KeyQueue",
    "MomentumEncoder",
    "MultiCropWrapper",
    "PrototypeBank",
    "StageConnectors",
    "backbone_features",
    "load_weights",
]
