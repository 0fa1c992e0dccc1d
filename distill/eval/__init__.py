"""Evaluation callbacks: weighted k-NN and linear probes on frozen features."""

from distill.eval.features import FeatureCache, extract_features
from distill.eval.knn import KNNEval, knn_accuracies, knn_class_scores
from distill.eval.linear import LinearProbe, fit_linear_classifier
from distill.eval.metrics import top_k_accuracies

__all__ = [
    "FeatureCache",
    "KNNEval",
    "LinearProbe",
    "extract_features",
    "fit_linear_classifier",
    "knn_accuracies",
    "knn_class_scores",
    "top_k_accuracies",
]
