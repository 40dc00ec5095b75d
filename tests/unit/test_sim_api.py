"""Sim request validation (vLLM-style errors), output-length rules and token text."""

from __future__ import annotations

import json

import pytest

from system.engines.sim.api import ApiError, parse_request
from system.engines.sim.textgen import (
    CHAT_TOKENS_PER_MESSAGE,
    CHAT_TOKENS_PER_PROMPT,
    TokenText,
    natural_output_len,
    resolve_output_len,
)
from system.tokens import count_tokens, synthetic_token

MODEL = "m"
MAX_LEN = 100


def parse(body: object, kind: str = "chat"):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_request(kind, raw, MODEL, MAX_LEN)


def chat(**kw: object) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hello world"}], **kw}


def test_chat_prompt_tokens_are_content_tokens_plus_template_overhead() -> None:
    pr = parse(
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]}
    )
    want = (
        count_tokens("be brief")
        + count_tokens("hi there")
        + 2 * CHAT_TOKENS_PER_MESSAGE
        + CHAT_TOKENS_PER_PROMPT
    )
    assert pr.prompt_tokens == want
    parts = parse({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi there"}]}]})
    assert parts.prompt_tokens == count_tokens("hi there") + CHAT_TOKENS_PER_MESSAGE + CHAT_TOKENS_PER_PROMPT
    assert parts.model == MODEL  # model defaults to the served one


def test_completion_prompt_forms() -> None:
    assert parse({"prompt": "hello world"}, "completion").prompt_tokens == count_tokens("hello world")
    assert parse({"prompt": ["hello world"]}, "completion").prompt_tokens == count_tokens("hello world")
    assert parse({"prompt": [1, 2, 3]}, "completion").prompt_tokens == 3
    assert parse({"prompt": ""}, "completion").prompt_tokens == 1  # BOS


def test_max_tokens_defaults_to_the_rest_of_the_context_and_sampling_options_parse() -> None:
    pr = parse({"prompt": "a b c", "stream": True, "stream_options": {"include_usage": True}}, "completion")
    assert pr.max_tokens == MAX_LEN - 3 and pr.stream and pr.include_usage
    pr = parse(chat(max_completion_tokens=7, min_tokens=3, ignore_eos=True))
    assert (pr.max_tokens, pr.min_tokens, pr.ignore_eos) == (7, 3, True)


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        ({"model": MODEL}, 400, "'messages' is a required field"),
        ({"messages": "hi"}, 400, "non-empty list"),
        ({"messages": []}, 400, "non-empty list"),
        ({"messages": [{"role": "robot", "content": "x"}]}, 400, "role"),
        ({"messages": [{"role": "user", "content": 5}]}, 400, "content"),
        (chat(model="other"), 404, "does not exist"),
        (chat(model=3), 400, "'model' must be a string"),
        (chat(max_tokens=0), 400, "at least 1"),
        (chat(max_tokens=-5), 400, "at least 1"),
        (chat(max_tokens="10"), 400, "must be an integer"),
        (chat(max_tokens=True), 400, "must be an integer"),
        (chat(max_tokens=95), 400, "maximum context length is 100"),
        (chat(stream="yes"), 400, "boolean"),
        (chat(stream_options={"include_usage": True}), 400, "stream=True"),
        (chat(temperature="hot"), 400, "number"),
        (chat(n=2), 400, "n=1"),
        (chat(min_tokens=-1), 400, "min_tokens"),
        (chat(max_tokens=5, min_tokens=6), 400, "min_tokens"),
        (chat(ignore_eos="true"), 400, "boolean"),
        ({"messages": [{"role": "user", "content": "word " * 120}]}, 400, "input tokens"),
    ],
)
def test_bad_chat_requests_get_openai_errors(body: object, status: int, needle: str) -> None:
    with pytest.raises(ApiError) as ei:
        parse(body)
    assert ei.value.status == status
    assert needle in ei.value.message
    err = json.loads(ei.value.body())["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == status


@pytest.mark.parametrize("prompt", [None, 5, {"a": 1}, ["a", "b"], [1, "a"], []])
def test_bad_completion_prompts(prompt: object) -> None:
    body = {"model": MODEL} if prompt is None else {"prompt": prompt}
    with pytest.raises(ApiError) as ei:
        parse(body, "completion")
    assert ei.value.status == 400 and "prompt" in ei.value.message


def test_output_length_rules() -> None:
    assert resolve_output_len(natural=50, max_tokens=10, min_tokens=0, ignore_eos=False) == (10, "length")
    assert resolve_output_len(natural=5, max_tokens=10, min_tokens=0, ignore_eos=False) == (5, "stop")
    assert resolve_output_len(natural=5, max_tokens=10, min_tokens=8, ignore_eos=False) == (8, "stop")
    assert resolve_output_len(natural=5, max_tokens=10, min_tokens=0, ignore_eos=True) == (10, "length")


def test_natural_output_length_is_seeded_and_spread() -> None:
    a = [natural_output_len(f"prompt {i}", 0, 128.0, 1.0) for i in range(400)]
    assert a == [natural_output_len(f"prompt {i}", 0, 128.0, 1.0) for i in range(400)]
    assert a != [natural_output_len(f"prompt {i}", 1, 128.0, 1.0) for i in range(400)]
    s = sorted(a)
    assert 90 < s[200] < 180  # median near 128
    assert s[0] >= 1 and s[-1] > 3 * s[200]  # long tail


def test_token_text_spans_are_exact_synthetic_tokens() -> None:
    tt = TokenText(300)
    assert tt.span(0, 300) == "".join(synthetic_token(i) for i in range(300))
    assert tt.span(17, 42) == "".join(synthetic_token(i) for i in range(17, 42))
    assert count_tokens(tt.span(5, 105)) == 100
