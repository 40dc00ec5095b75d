"""Prompt sources: spec validation, the labelled corpus, synthetic lengths (ShareGPT: its own file)."""

from __future__ import annotations

import dataclasses
import statistics
from collections import Counter

import pytest

from system.tokens import count_tokens
from system.workload import SOURCES, Prompt, PromptSource, load_prompts
from system.workload.labelled import DOMAINS


def test_prompt_is_frozen() -> None:
    p = Prompt("hi", 5)
    assert p.label is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.text = "other"  # type: ignore[misc]


def test_registry_has_the_three_kinds() -> None:
    assert set(SOURCES) == {"labelled", "sharegpt", "synthetic"}
    assert all(issubclass(c, PromptSource) for c in SOURCES.values())


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"kind": "nope"}, "valid kinds: labelled, sharegpt, synthetic"),
        ({"n": 3}, "no 'kind'"),
        ({"kind": "labelled", "colour": 1}, "valid options: n, seed, domains"),
        ({"kind": "synthetic", "path": "x"}, "'path'"),
        ({"kind": "labelled", "n": 0}, "'n' must be an integer >= 1"),
        ({"kind": "labelled", "n": True}, "'n' must be an integer"),
        ({"kind": "labelled", "seed": -1}, "'seed'"),
        ({"kind": "labelled", "domains": ["code", "cooking"]}, "valid domains: code, math"),
        ({"kind": "synthetic", "distribution": "normal"}, "fixed, uniform"),
        ({"kind": "synthetic", "prompt_tokens": [4, 8]}, "only with distribution 'uniform'"),
        ({"kind": "synthetic", "distribution": "uniform", "output_tokens": [9, 3]}, "1 <= lo <= hi"),
        ({"kind": "synthetic", "prompt_tokens": 0}, "1 <= lo <= hi"),
        ({"kind": "synthetic", "distribution": "uniform", "range_ratio": 1.5}, "range_ratio"),
    ],
)
def test_bad_specs_name_the_valid_choices(spec: dict, fragment: str) -> None:
    with pytest.raises(ValueError) as err:
        load_prompts(spec)
    assert fragment in str(err.value)


def test_spec_must_be_a_mapping() -> None:
    with pytest.raises(ValueError, match="mapping"):
        load_prompts(["labelled"])  # type: ignore[arg-type]


def test_labelled_is_deterministic_and_seed_dependent() -> None:
    a = load_prompts({"kind": "labelled", "n": 300, "seed": 7})
    b = load_prompts({"kind": "labelled", "n": 300, "seed": 7})
    c = load_prompts({"kind": "labelled", "n": 300, "seed": 8})
    assert a == b
    assert [p.text for p in a] != [p.text for p in c]


def test_labelled_is_balanced_over_eight_domains() -> None:
    prompts = load_prompts({"kind": "labelled", "n": 800, "seed": 0})
    counts = Counter(p.label for p in prompts)
    assert len(counts) == 8
    assert set(counts.values()) == {100}
    # shuffled, not grouped by domain
    assert len({p.label for p in prompts[:16]}) >= 4


def test_labelled_prompts_are_varied() -> None:
    prompts = load_prompts({"kind": "labelled", "n": 2000, "seed": 0})
    assert len({p.text for p in prompts}) / len(prompts) > 0.8
    for label in DOMAINS:
        texts = [p.text for p in prompts if p.label == label]
        assert len(set(texts)) > 0.6 * len(texts), label
        lengths = [len(t) for t in texts]
        assert max(lengths) > 2 * min(lengths), label  # not one fixed sentence shape


def test_every_template_slot_has_a_vocabulary() -> None:
    for domain in DOMAINS.values():
        assert domain.fields() <= set(domain.slots), domain.label
        assert all(domain.slots[f] for f in domain.fields()), domain.label


def test_labelled_output_lengths_follow_the_domain_design() -> None:
    prompts = load_prompts({"kind": "labelled", "n": 4000, "seed": 1})
    med = {
        lbl: statistics.median(p.reference_output_tokens for p in prompts if p.label == lbl)
        for lbl in DOMAINS
    }
    for lbl, domain in DOMAINS.items():
        lengths = [p.reference_output_tokens for p in prompts if p.label == lbl]
        assert domain.output.lo <= min(lengths) and max(lengths) <= domain.output.hi
        assert abs(med[lbl] - domain.output.median) < 0.2 * domain.output.median, lbl
    assert med["code"] > med["summarisation"] > med["chit_chat"]
    assert med["creative_writing"] > med["translation"]


def test_labelled_domain_subset() -> None:
    prompts = load_prompts({"kind": "labelled", "n": 10, "domains": ["code", "law"]})
    assert {p.label for p in prompts} == {"code", "law"}


def test_synthetic_fixed_lengths_are_exact_and_prompts_distinct() -> None:
    prompts = load_prompts({"kind": "synthetic", "n": 50, "prompt_tokens": 200, "output_tokens": 64})
    assert all(count_tokens(p.text) == 200 for p in prompts)
    assert {p.reference_output_tokens for p in prompts} == {64}
    assert len({p.text for p in prompts}) == 50
    assert all(p.label is None for p in prompts)


def test_synthetic_uniform_stays_in_range_and_is_deterministic() -> None:
    spec = {"kind": "synthetic", "n": 400, "seed": 3, "distribution": "uniform"}
    prompts = load_prompts({**spec, "prompt_tokens": 100, "output_tokens": [10, 20], "range_ratio": 0.5})
    plens = [count_tokens(p.text) for p in prompts]
    olens = [p.reference_output_tokens for p in prompts]
    assert min(plens) >= 50 and max(plens) <= 150 and max(plens) - min(plens) > 60
    assert set(olens) == set(range(10, 21))
    again = load_prompts({**spec, "prompt_tokens": 100, "output_tokens": [10, 20], "range_ratio": 0.5})
    assert again == prompts
