"""Single-prompt inference from a fitted TF-IDF -> [SVD -> l2] -> KMeans pipeline without sklearn overhead."""

from __future__ import annotations

import math
import re
from operator import mul

import numpy as np
from sklearn.cluster import KMeans
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.pipeline import Pipeline

from system import speedups

try:  # the C loop behind collections.Counter, without Counter's per-call Python overhead
    from _collections import _count_elements
except ImportError:  # pragma: no cover - other interpreters

    def _count_elements(mapping: dict, iterable) -> None:  # type: ignore[no-redef,type-arg,no-untyped-def]
        for x in iterable:
            mapping[x] = mapping.get(x, 0) + 1


# sklearn's default token_pattern; on ASCII text its tokens are exactly the maximal runs of [A-Za-z0-9_] of
# two or more characters (\b on each side of a greedy \w run holds at the run's ends and nowhere inside it)
DEFAULT_TOKEN_PATTERN = r"(?u)\b\w\w+\b"
_WORD_BYTES = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"


def ascii_token_table(lowercase: bool) -> bytes:
    """bytes.translate table: ASCII word characters kept (upper case folded when `lowercase`), every other
    byte a space, so that `split()` yields the word runs."""
    table = bytearray(b" " * 256)
    for c in _WORD_BYTES:
        table[c] = c + 32 if lowercase and 65 <= c <= 90 else c
    return bytes(table)


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
        # the ASCII lane of _counts (default token pattern only): bytes.translate + split instead of the
        # regex, ~10 us less per prompt; one-character runs are never in the vocabulary, so need no filter
        self._ascii_table = (
            ascii_token_table(self._lowercase) if tfidf.token_pattern == DEFAULT_TOKEN_PATTERN else None
        )
        self._vocab_ascii: dict[bytes, int] = (
            {t.encode(): j for t, j in self._vocab.items() if t.isascii()}
            if self._ascii_table is not None
            else {}
        )
        self._idf = np.asarray(tfidf.idf_, dtype=np.float64) if tfidf.use_idf else None
        self._sublinear = bool(tfidf.sublinear_tf)
        centroids = np.asarray(kmeans.cluster_centers_, dtype=np.float64)
        self._c_sq = np.einsum("ij,ij->i", centroids, centroids)
        if "svd" in steps:
            # rows indexed by vocabulary id: x_svd = w @ proj[idx] touches only the prompt's terms
            self._proj: np.ndarray | None = np.ascontiguousarray(steps["svd"].components_.T, dtype=np.float64)
            self._normalize = "norm" in steps
            self._centroids = np.ascontiguousarray(centroids)
            # predict's lean form (see predict): idf folded into the projection rows, and each row followed by
            # its dot products with the centroids, so one gather and one product give both z and C @ z
            idf = self._idf[:, None] if self._idf is not None else 1.0
            proj_idf = self._proj * idf
            self._dim = int(proj_idf.shape[1])
            self._proj_aug = np.ascontiguousarray(np.hstack([proj_idf, proj_idf @ centroids.T]))
            # the same gather, product and argmin in C where built (system/_speedups.c): ~70 us less per
            # request inside the gateway, where numpy's code is cold (docs/PERFORMANCE.md)
            self._kernel = (
                speedups.Kernel(self._proj_aug, self._dim, self._c_sq.tolist(), self._sublinear).nearest
                if speedups.Kernel is not None and self._normalize
                else None
            )
        else:
            self._proj = None
            self._normalize = False
            # without SVD the centroids live in vocabulary space: keep them term-major for row gathers
            self._centroids_t = np.ascontiguousarray(centroids.T)
            self._kernel = None
        self.k = int(centroids.shape[0])
        self._c_sq_list: list[float] = self._c_sq.tolist()

    def _counts(self, text: str) -> dict[int, int]:
        """Term id -> count of the vocabulary terms in `text`, in first-seen order. A plain dict filled by
        Counter's C loop: under the gateway's cold caches `collections.Counter` itself (its ABC checks
        included) took up to ~60 us per prompt, and a Python loop over the tokens about half of that. ASCII
        text (with the default token pattern) is tokenised by one byte table instead of the regex, which cost
        most of the rest: Python's `re` spends ~60 ns a character on that pattern."""
        counts: dict[int | None, int] = {}
        table = self._ascii_table
        if table is not None and text.isascii():
            _count_elements(counts, map(self._vocab_ascii.get, text.encode().translate(table).split()))
            counts.pop(None, None)
            return counts  # type: ignore[return-value]
        if self._lowercase:
            text = text.lower()
        _count_elements(counts, map(self._vocab.get, self._findall(text)))
        counts.pop(None, None)  # tokens outside the vocabulary
        return counts  # type: ignore[return-value]

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
        the answer: the tf-idf vector's l2 norm (a positive factor on the SVD output, which is re-normalised).
        One row gather (`take`) and one product give z and C @ z together (`_proj_aug`); the rest is a few
        Python floats. The gateway runs it on every request with caches made cold by the network work around
        it, where each numpy call costs several microseconds, fancy indexing most (docs/PERFORMANCE.md); so
        where the C extension is built, `_kernel` does the same gather, sums and argmin in one C loop over the
        prompt's rows (the tf-idf terms are still counted here)."""
        if self._proj is None or not self._normalize:
            return int(np.argmin(self.scores(text)))
        counts = self._counts(text)
        c_sq = self._c_sq_list
        if not counts:
            return c_sq.index(min(c_sq))
        if self._kernel is not None:
            best = self._kernel(counts)
            return best if best >= 0 else c_sq.index(min(c_sq))
        if self._sublinear:
            log = math.log
            tf = [1.0 + log(c) for c in counts.values()]
        else:
            tf = [float(c) for c in counts.values()]
        # rows.T @ tf, not tf @ rows: the same sum, one conversion less (tf stays the gemv's vector operand);
        # ~3 us less warm and ~10-20 us less with cold caches (ad hoc, 256 bench prompts)
        zc = self._proj_aug.take(list(counts), 0).T.dot(tf).tolist()
        d = self._dim
        z = zc[:d]
        zz = sum(map(mul, z, z))
        if zz <= 0.0:  # sklearn's Normalizer leaves a zero vector at the origin
            return c_sq.index(min(c_sq))
        scale = 2.0 / math.sqrt(zz)
        best, best_v = 0, c_sq[0] - scale * zc[d]
        for c in range(1, len(c_sq)):  # first minimum on ties, like argmin
            v = c_sq[c] - scale * zc[d + c]
            if v < best_v:
                best, best_v = c, v
        return best

    def rank(self, text: str) -> list[int]:
        # stable sort: ties keep the lowest id first, like argmin, so rank()[0] == predict()
        return np.argsort(self.scores(text), kind="stable").tolist()
