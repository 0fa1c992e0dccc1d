"""Evaluation callbacks: weighted k-NN and linear probes on frozen features."""

from distill.eval.features import extract_features
from distill.eval.knn import KNNEval, knn_class_scores
from distill.eval.linear import LinearProbe, fit_linear_classifier

__all__ = [
    "KNNEval",
    "LinearProbe",
    "extract_features",
    "fit_linear_classifier",
    "knn_class_scores",
]
