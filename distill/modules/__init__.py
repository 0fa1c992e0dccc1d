"""Reusable stateful parts: heads, a frozen teacher, weight loading."""

from distill.modules.heads import Classifier, backbone_features
from distill.modules.teacher import FrozenTeacher
from distill.modules.weights import load_weights

__all__ = ["Classifier", "FrozenTeacher", "backbone_features", "load_weights"]
