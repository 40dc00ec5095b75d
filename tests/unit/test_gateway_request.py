"""Request parsing on the hot path: body checks and the text the classifier sees."""

from __future__ import annotations

import json

import pytest

from system.gateway.errors import error_body
from system.gateway.request import CHAT, BadRequest, parse_body, prompt_text


@pytest.mark.parametrize(
    ("raw", "status", "fragment"),
    [
        (b"", 400, "empty"),
        (b"{oops", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object, got list"),
        (b'{"messages": []}', 400, "`model` is required"),
        (b'{"model": 3}', 400, "`model` is required"),
        (b"\xff\xfe", 400, "not valid JSON"),
    ],
)
def test_parse_body_rejects(raw: bytes, status: int, fragment: str) -> None:
    with pytest.raises(BadRequest) as exc:
        parse_body(raw)
    assert exc.value.status == status and fragment in exc.value.message


def test_prompt_text_chat_and_completion() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "be nice"},
            {"role": "user", "content": "fix my code"},
            {"role": "assistant", "content": "sure"},
            {"role": "user", "content": [{"type": "text", "text": "in python"}, {"type": "image_url"}]},
        ]
    }
    assert prompt_text(body, CHAT, 1000) == "fix my code\nin python"
    assert prompt_text(body, CHAT, 5) == "fix m"
    assert prompt_text({"prompt": "once upon"}, "/v1/completions", 100) == "once upon"
    assert prompt_text({"prompt": ["a", "b"]}, "/v1/completions", 100) == "a\nb"
    assert prompt_text({"prompt": [[1, 2, 3]]}, "/v1/completions", 100) == ""
    with pytest.raises(BadRequest, match="messages"):
        prompt_text({"messages": "hi"}, CHAT, 100)
    with pytest.raises(BadRequest, match="prompt"):
        prompt_text({}, "/v1/completions", 100)


def test_error_body_is_openai_shaped() -> None:
    err = json.loads(error_body(429, "busy"))["error"]
    assert err == {"message": "busy", "type": "rate_limit_error", "param": None, "code": 429}


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}]}',
        b'{"messages": [], "model" :"auto" , "n": 1}',
        b'{"model": "au\\u0074o", "messages": []}',
        # the text "model": inside a string, and a nested model key: must fall back to re-serialising
        b'{"model": "auto", "messages": [{"role": "user", "content": "\\"model\\": \\"x\\""}]}',
        b'{"model": "auto", "response_format": {"model": "auto"}}',
    ],
)
def test_rewrite_model_changes_only_the_model(raw: bytes) -> None:
    from system.gateway.request import rewrite_model

    body = json.loads(raw)
    out = rewrite_model(raw, body, "served")
    assert json.loads(out) == {**body, "model": "served"}
    assert body["model"] == "auto"  # the parsed body is not mutated (a retry rewrites again)
    assert rewrite_model(raw, body, None) is raw
    assert rewrite_model(raw, body, "auto") is raw
