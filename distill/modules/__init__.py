"""Reusable stateful parts: heads, weight loading (memory banks, queues, EMA come with methods)."""

from distill.modules.heads import Classifier, backbone_features
from distill.modules.weights import load_weights

__all__ = ["Classifier", "backbone_features", "load_weights"]
