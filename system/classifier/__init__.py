"""Prompt classifier: TF-IDF -> optional TruncatedSVD -> KMeans, saved with skops."""

from __future__ import annotations

from system.classifier.model import CARD_FILE, MODEL_FILE, TRUSTED_TYPES, PromptClassifier

__all__ = ["CARD_FILE", "MODEL_FILE", "TRUSTED_TYPES", "PromptClassifier"]
