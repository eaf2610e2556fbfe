"""Evaluation metrics: zero-shot CLIP classification, Fréchet distance, CLIP score."""
from .classifier import ClipZeroShotClassifier, ZeroShotResult, toy_color_classifier, toy_shape_classifier

__all__ = ["ClipZeroShotClassifier", "ZeroShotResult", "toy_color_classifier", "toy_shape_classifier"]
