"""PromptClassifier: train TF-IDF -> [TruncatedSVD -> l2] -> KMeans, predict fast, save/load with skops."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import skops.io as sio
from sklearn.cluster import KMeans
from sklearn.decomposition import TruncatedSVD
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer

from system.classifier.card import build_card
from system.classifier.fastpath import FastPath
from system.workload.base import Prompt

MODEL_FILE = "model.skops"
CARD_FILE = "card.json"
# LSA dimension: on the labelled corpus (k=8) 24-32 components gave ARI ~0.93 across seeds, 64-100 gave
# 0.75-0.90 with more seed-to-seed spread, and no SVD ~0.3 (KMeans on sparse TF-IDF makes one giant cluster)
DEFAULT_SVD_COMPONENTS = 32

# The types a pipeline built by `train` contains. skops trusts common sklearn/numpy types itself and reports
# every other type in a file as untrusted; we pass on only those in this list, so a tampered model.skops
# naming any other type (a function, an arbitrary class) is rejected before anything is instantiated.
TRUSTED_TYPES: frozenset[str] = frozenset(
    {
        "builtins.float",
        "builtins.int",
        "builtins.str",
        "builtins.tuple",
        "numpy.dtype",
        "numpy.float64",
        "numpy.int64",
        "numpy.int32",
        "numpy.ndarray",
        "sklearn.cluster._kmeans.KMeans",
        "sklearn.decomposition._truncated_svd.TruncatedSVD",
        "sklearn.feature_extraction.text.TfidfTransformer",
        "sklearn.feature_extraction.text.TfidfVectorizer",
        "sklearn.pipeline.Pipeline",
        "sklearn.preprocessing._data.Normalizer",
    }
)


def _texts_labels(prompts: Sequence[Prompt] | Sequence[str]) -> tuple[list[str], list[str] | None]:
    texts: list[str] = []
    labels: list[str | None] = []
    for i, p in enumerate(prompts):
        if isinstance(p, Prompt):
            texts.append(p.text)
            labels.append(p.label)
        elif isinstance(p, str):
            texts.append(p)
            labels.append(None)
        else:
            raise TypeError(f"prompt {i} is {type(p).__name__}, expected str or Prompt")
    # scores against labels only make sense when every prompt has one
    if labels and all(lbl is not None for lbl in labels):
        return texts, [str(lbl) for lbl in labels]
    return texts, None


def training_hash(texts: Sequence[str]) -> str:
    """sha256 over the training texts in order (NUL-separated), to tell which data a model saw."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()


def _build_pipeline(svd: int | None, k: int, seed: int, n_init: int, stop_words: str | None) -> Pipeline:
    steps: list[tuple[str, Any]] = [
        (
            "tfidf",
            # sublinear tf: a word repeated in a long prompt should not dominate its topic
            TfidfVectorizer(lowercase=True, stop_words=stop_words, sublinear_tf=True, dtype=np.float64),
        )
    ]
    if svd:
        # LSA (Manning et al., sklearn's text clustering example): SVD then re-normalise so KMeans'
        # Euclidean distance is cosine distance again
        steps.append(("svd", TruncatedSVD(n_components=svd, random_state=seed)))
        steps.append(("norm", Normalizer(copy=False)))
    steps.append(("kmeans", KMeans(n_clusters=k, n_init=n_init, random_state=seed)))
    return Pipeline(steps)


class PromptClassifier:
    """Clusters prompts (the paper's TF-IDF + KMeans router); `predict` is the gateway's hot path."""

    def __init__(self, pipeline: Pipeline, card: dict[str, Any]) -> None:
        self.pipeline = pipeline
        self.card = card
        self._fast = FastPath(pipeline)
        self.k: int = self._fast.k

    # ------------------------------------------------------------------ training
    @classmethod
    def train(
        cls,
        prompts: Sequence[Prompt] | Sequence[str],
        k: int,
        *,
        svd_components: int | None = DEFAULT_SVD_COMPONENTS,
        seed: int = 0,
        n_init: int = 10,
        workload: dict[str, Any] | None = None,
    ) -> PromptClassifier:
        """Fit on `prompts`; labels (when every Prompt has one) are used only to score the clustering."""
        texts, labels = _texts_labels(prompts)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        if len(texts) < k:
            raise ValueError(f"k={k} clusters need at least {k} training prompts, got {len(texts)}")
        if svd_components is not None and svd_components < 0:
            raise ValueError(f"svd_components must be >= 0 or None, got {svd_components}")
        svd_requested = svd_components or None
        stop_words: str | None = "english"
        tfidf = TfidfVectorizer(lowercase=True, stop_words=stop_words, sublinear_tf=True)
        try:
            n_terms = len(tfidf.fit(texts).vocabulary_)
        except ValueError:
            # e.g. synthetic prompts made only of stop words: keep them rather than fail
            stop_words = None
            try:
                n_terms = len(TfidfVectorizer(lowercase=True, sublinear_tf=True).fit(texts).vocabulary_)
            except ValueError as e:
                raise ValueError(f"no usable terms in the training prompts: {e}") from e
        # TruncatedSVD needs n_components < n_features; tiny corpora get fewer components (noted in the card)
        svd = min(svd_requested, n_terms - 1, len(texts) - 1) if svd_requested else None
        if svd is not None and svd < 1:
            svd = None
        pipeline = _build_pipeline(svd, k, seed, n_init, stop_words)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            pipeline.fit(texts)
        # KMeans convergence warnings (e.g. fewer distinct prompts than k) belong in the card; others pass on
        notes = [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]
        for w in caught:
            if not issubclass(w.category, ConvergenceWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        card = build_card(
            pipeline,
            texts,
            labels,
            seed=seed,
            svd_requested=svd_requested,
            train_hash=training_hash(texts),
            workload=workload,
            notes=notes,
        )
        return cls(pipeline, card)

    # ------------------------------------------------------------------ inference
    def predict(self, text: str) -> int:
        """Cluster id of `text` (nearest centroid); the gateway's hot path."""
        return self._fast.predict(text)

    def rank(self, text: str) -> list[int]:
        """All cluster ids, nearest first: rank(text)[0] == predict(text); the rest are retry candidates."""
        return self._fast.rank(text)

    def distances(self, text: str) -> np.ndarray:
        """Squared Euclidean distance from `text`'s vector to each centroid."""
        feats = self.pipeline[:-1].transform([text])
        x_sq = float(feats.multiply(feats).sum()) if hasattr(feats, "multiply") else float((feats**2).sum())
        return self._fast.scores(text) + x_sq

    def predict_many(self, texts: Sequence[str]) -> np.ndarray:
        """Cluster ids of many texts at once through sklearn's vectorised pipeline (int64 array)."""
        if isinstance(texts, str):
            raise TypeError("predict_many takes a sequence of strings, not one string")
        texts = list(texts)
        if not texts:
            return np.empty(0, dtype=np.int64)
        return np.asarray(self.pipeline.predict(texts), dtype=np.int64)

    # ------------------------------------------------------------------ persistence
    def save(self, directory: Path | str) -> None:
        """Write model.skops and card.json (with the model file's sha256) into `directory`."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        model_path = d / MODEL_FILE
        tmp = d / (MODEL_FILE + ".tmp")
        sio.dump(self.pipeline, tmp)
        os.replace(tmp, model_path)
        self.card["model_sha256"] = hashlib.sha256(model_path.read_bytes()).hexdigest()
        tmp_card = d / (CARD_FILE + ".tmp")
        tmp_card.write_text(json.dumps(self.card, indent=2, sort_keys=False) + "\n")
        os.replace(tmp_card, d / CARD_FILE)

    @classmethod
    def load(cls, directory: Path | str) -> PromptClassifier:
        """Load a saved classifier, trusting only TRUSTED_TYPES; ValueError/FileNotFoundError on problems."""
        d = Path(directory)
        model_path, card_path = d / MODEL_FILE, d / CARD_FILE
        if not d.is_dir():
            raise FileNotFoundError(f"classifier directory not found: {d}")
        for p in (model_path, card_path):
            if not p.is_file():
                raise FileNotFoundError(f"classifier directory {d} has no {p.name} (train one first)")
        try:
            card = json.loads(card_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{card_path}: not valid JSON: {e}") from e
        data = model_path.read_bytes()
        expected = card.get("model_sha256")
        if expected and hashlib.sha256(data).hexdigest() != expected:
            raise ValueError(f"{model_path} does not match the sha256 in {card_path}: model file changed")
        try:
            untrusted = sio.get_untrusted_types(data=data)
        except Exception as e:
            raise ValueError(f"{model_path}: not a readable skops file: {e}") from e
        rejected = sorted(set(untrusted) - TRUSTED_TYPES)
        if rejected:
            raise ValueError(f"{model_path} contains types outside the allow-list: {', '.join(rejected)}")
        pipeline = sio.loads(data, trusted=list(untrusted))
        if not isinstance(pipeline, Pipeline) or pipeline.steps[-1][0] != "kmeans":
            raise ValueError(f"{model_path} is not a TF-IDF/KMeans pipeline")
        clf = cls(pipeline, card)
        if card.get("k") not in (None, clf.k):
            raise ValueError(f"{card_path} says k={card.get('k')} but the model has {clf.k} clusters")
        return clf

    def __repr__(self) -> str:
        return f"PromptClassifier(k={self.k}, svd={self.card.get('svd_components')})"
