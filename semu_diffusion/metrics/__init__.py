"""Evaluation metrics: zero-shot CLIP classification, Fréchet distance, CLIP score."""
from .classifier import (PERSON_LABEL, ClipZeroShotClassifier, ZeroShotResult, toy_color_classifier, toy_shape_classifier,
                         toy_style_classifier)
from .clipscore import ClipScore, clip_score_from_features
from .frechet import FrechetDistance, feature_stats, frechet_distance

__all__ = ["ClipScore", "ClipZeroShotClassifier", "FrechetDistance", "ZeroShotResult", "clip_score_from_features",
           "feature_stats", "frechet_distance", "toy_color_classifier", "toy_shape_classifier"]
