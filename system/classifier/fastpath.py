"""Single-prompt inference from a fitted TF-IDF -> [SVD -> l2] -> KMeans pipeline without sklearn overhead."""

from __future__ import annotations

import math
import re

import numpy as np
from sklearn.cluster import KMeans
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.pipeline import Pipeline

# sklearn's Pipeline.predict on one string validates inputs, builds a CSR matrix and runs chunked
# distance kernels: hundreds of microseconds. The gateway classifies every request on its event loop, so we
# redo the same arithmetic on one sparse row with a dict lookup and a few tiny numpy products instead.


class FastPath:
    """Nearest-centroid scoring for one text, numerically equal to the fitted sklearn pipeline."""

    def __init__(self, pipeline: Pipeline) -> None:
        steps = dict(pipeline.steps)
        tfidf: TfidfVectorizer = steps["tfidf"]
        kmeans: KMeans = steps["kmeans"]
        # fast path reproduces exactly these settings; anything else would silently disagree with sklearn
        if tfidf.analyzer != "word" or tfidf.ngram_range != (1, 1) or tfidf.tokenizer is not None:
            raise ValueError("fast path supports word unigrams with the default tokenizer only")
        if tfidf.preprocessor is not None or tfidf.strip_accents is not None or tfidf.norm != "l2":
            raise ValueError("fast path needs preprocessor=None, strip_accents=None, norm='l2'")
        self._lowercase = bool(tfidf.lowercase)
        self._findall = re.compile(tfidf.token_pattern).findall
        self._vocab: dict[str, int] = {str(t): int(j) for t, j in tfidf.vocabulary_.items()}
        self._idf = np.asarray(tfidf.idf_, dtype=np.float64) if tfidf.use_idf else None
        self._sublinear = bool(tfidf.sublinear_tf)
        centroids = np.asarray(kmeans.cluster_centers_, dtype=np.float64)
        self._c_sq = np.einsum("ij,ij->i", centroids, centroids)
        if "svd" in steps:
            # rows indexed by vocabulary id: x_svd = w @ proj[idx] touches only the prompt's terms
            self._proj: np.ndarray | None = np.ascontiguousarray(steps["svd"].components_.T, dtype=np.float64)
            self._normalize = "norm" in steps
            self._centroids = np.ascontiguousarray(centroids)
            # predict's lean form (see predict): idf folded into the projection rows
            idf = self._idf[:, None] if self._idf is not None else 1.0
            self._proj_idf = np.ascontiguousarray(self._proj * idf)
        else:
            self._proj = None
            self._normalize = False
            # without SVD the centroids live in vocabulary space: keep them term-major for row gathers
            self._centroids_t = np.ascontiguousarray(centroids.T)
        self.k = int(centroids.shape[0])
        self._c_sq_list: list[float] = self._c_sq.tolist()

    def _counts(self, text: str) -> dict[int, int]:
        """Term id -> count of the vocabulary terms in `text`, in first-seen order. A plain dict: under the
        gateway's cold caches `collections.Counter` (its ABC checks included) took up to ~60 us per prompt."""
        if self._lowercase:
            text = text.lower()
        vocab = self._vocab
        counts: dict[int, int] = {}
        for t in self._findall(text):
            i = vocab.get(t)
            if i is not None:
                counts[i] = counts.get(i, 0) + 1
        return counts

    def _weights(self, text: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(term ids, l2-normalised tf-idf weights) of `text`, or None when no term is in the vocabulary."""
        counts = self._counts(text)
        if not counts:
            return None
        idx = np.fromiter(counts.keys(), dtype=np.intp, count=len(counts))
        tf = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
        if self._sublinear:
            tf = np.log(tf)
            tf += 1.0
        w = tf * self._idf[idx] if self._idf is not None else tf
        norm = math.sqrt(float(w @ w))
        if norm > 0.0:
            w /= norm
        return idx, w

    def scores(self, text: str) -> np.ndarray:
        """Squared distance to each centroid minus the (constant) squared norm of the prompt's vector."""
        feats = self._weights(text)
        if feats is None:
            # all-zero vector (sklearn maps unknown-only text to the origin): nearest = smallest ||c||
            return self._c_sq.copy()
        idx, w = feats
        if self._proj is None:
            dots = w @ self._centroids_t[idx]
        else:
            z = w @ self._proj[idx]
            if self._normalize:
                zn = math.sqrt(float(z @ z))
                if zn > 0.0:
                    z /= zn
            dots = self._centroids @ z
        return self._c_sq - 2.0 * dots

    def predict(self, text: str) -> int:
        """Nearest centroid. With SVD + re-normalisation (the trained pipeline) this skips what cannot change
        the answer: the tf-idf vector's l2 norm (a positive factor on the SVD output, which is re-normalised)
        and half the numpy calls of `scores`. The gateway runs it on every request with caches made cold by
        the network work around it, where each numpy call costs several microseconds (docs/PERFORMANCE.md)."""
        if self._proj is None or not self._normalize:
            return int(np.argmin(self.scores(text)))
        counts = self._counts(text)
        c_sq = self._c_sq_list
        if not counts:
            return c_sq.index(min(c_sq))
        if self._sublinear:
            tf = [1.0 + math.log(c) for c in counts.values()]
        else:
            tf = [float(c) for c in counts.values()]
        z = np.dot(tf, self._proj_idf[list(counts)])
        zz = float(np.dot(z, z))
        if zz <= 0.0:  # sklearn's Normalizer leaves a zero vector at the origin
            return c_sq.index(min(c_sq))
        dots = np.dot(self._centroids, z).tolist()
        scale = 2.0 / math.sqrt(zz)
        best, best_v = 0, c_sq[0] - scale * dots[0]
        for c in range(1, len(c_sq)):  # first minimum on ties, like argmin
            v = c_sq[c] - scale * dots[c]
            if v < best_v:
                best, best_v = c, v
        return best

    def rank(self, text: str) -> list[int]:
        # stable sort: ties keep the lowest id first, like argmin, so rank()[0] == predict()
        return np.argsort(self.scores(text), kind="stable").tolist()
