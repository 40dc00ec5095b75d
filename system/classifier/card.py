"""The classifier's JSON card: what it was trained on, how well it clusters, and with which versions."""

from __future__ import annotations

import datetime as dt
import platform
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import sklearn
import skops
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score
from sklearn.pipeline import Pipeline

SILHOUETTE_SAMPLE = 2000
TOP_TERMS = 8


def _top_terms(pipeline: Pipeline) -> list[list[str]]:
    """Highest-weight vocabulary terms of each centroid (mapped back through the SVD when there is one)."""
    steps = dict(pipeline.steps)
    centroids = steps["kmeans"].cluster_centers_
    if "svd" in steps:
        centroids = centroids @ steps["svd"].components_
    terms = steps["tfidf"].get_feature_names_out()
    order = np.argsort(-centroids, axis=1)[:, :TOP_TERMS]
    return [[str(terms[j]) for j in row] for row in order]


def clustering_scores(labels: Sequence[str], clusters: Sequence[int]) -> dict[str, float]:
    """ARI, NMI and purity (share of prompts in their cluster's majority label) of a clustering."""
    purity_hits = 0
    by_cluster: dict[int, Counter[str]] = {}
    for lbl, c in zip(labels, clusters, strict=True):
        by_cluster.setdefault(int(c), Counter())[lbl] += 1
    for counts in by_cluster.values():
        purity_hits += counts.most_common(1)[0][1]
    return {
        "ari": round(float(adjusted_rand_score(labels, clusters)), 4),
        "nmi": round(float(normalized_mutual_info_score(labels, clusters)), 4),
        "purity": round(purity_hits / max(1, len(labels)), 4),
    }


def silhouette(pipeline: Pipeline, texts: Sequence[str], clusters: np.ndarray, seed: int) -> float | None:
    """Silhouette in the space KMeans clustered (cosine geometry), on a sample; None when undefined."""
    n_clusters = len(set(clusters.tolist()))
    if n_clusters < 2 or n_clusters > len(texts) - 1:
        return None
    feats = pipeline[:-1].transform(list(texts))
    sample = min(SILHOUETTE_SAMPLE, len(texts))
    return round(float(silhouette_score(feats, clusters, sample_size=sample, random_state=seed)), 4)


def build_card(
    pipeline: Pipeline,
    texts: Sequence[str],
    labels: Sequence[str] | None,
    *,
    seed: int,
    svd_requested: int | None,
    train_hash: str,
    workload: dict[str, Any] | None,
    notes: list[str],
) -> dict[str, Any]:
    """Everything `classifier eval` prints; labels only score the clustering, they never train it."""
    steps = dict(pipeline.steps)
    kmeans = steps["kmeans"]
    clusters = np.asarray(kmeans.labels_)
    k = int(kmeans.n_clusters)
    sizes = np.bincount(clusters, minlength=k).tolist()
    top = _top_terms(pipeline)
    per_cluster: list[dict[str, Any]] = []
    for c in range(k):
        entry: dict[str, Any] = {"id": c, "size": int(sizes[c]), "top_terms": top[c]}
        if labels is not None:
            counts = Counter(lbl for lbl, cl in zip(labels, clusters, strict=True) if cl == c)
            if counts:
                lbl, hits = counts.most_common(1)[0]
                entry["majority_label"] = lbl
                entry["majority_share"] = round(hits / sizes[c], 4)
        per_cluster.append(entry)
    svd = steps.get("svd")
    tfidf = steps["tfidf"]
    card: dict[str, Any] = {
        "k": k,
        "n_train": len(texts),
        "cluster_sizes": [int(s) for s in sizes],
        "training_data_sha256": train_hash,
        "workload": workload,
        "seed": seed,
        "pipeline": [name for name, _ in pipeline.steps],
        "vocabulary_size": len(tfidf.vocabulary_),
        "stop_words": tfidf.stop_words,
        "svd_components": int(svd.n_components) if svd is not None else None,
        "svd_components_requested": svd_requested,
        "svd_explained_variance": round(float(svd.explained_variance_ratio_.sum()), 4) if svd else None,
        "kmeans_inertia": round(float(kmeans.inertia_), 4),
        "kmeans_n_init": int(kmeans.n_init) if isinstance(kmeans.n_init, int) else str(kmeans.n_init),
        "silhouette": silhouette(pipeline, texts, clusters, seed),
        "silhouette_sample": min(SILHOUETTE_SAMPLE, len(texts)),
        "labels": sorted(set(labels)) if labels is not None else None,
        "scores": clustering_scores(labels, clusters.tolist()) if labels is not None else None,
        "clusters": per_cluster,
        "versions": {
            "python": platform.python_version(),
            "sklearn": sklearn.__version__,
            "skops": skops.__version__,
            "numpy": np.__version__,
        },
        "notes": notes,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    return card
