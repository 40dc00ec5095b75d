"""Prompt classifier: TF-IDF -> optional TruncatedSVD -> KMeans, saved with skops."""
