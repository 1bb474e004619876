"""Explicit softmax classifiers on non-negative features (scikit-learn style)."""

from .estimator import ExplicitSoftmaxClassifier

__all__ = ["ExplicitSoftmaxClassifier"]
