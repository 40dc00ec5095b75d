"""Request parsing on the hot path: body checks and the text the classifier sees."""

from __future__ import annotations

import json

import pytest

from system.gateway.errors import error_body
from system.gateway.request import (
    CHAT,
    BadRequest,
    check_content_type,
    parse_body,
    prompt_text,
    read_body_asgi,
    request_head,
    rewrite_model,
)
from system.jsonbody import _member_spans, loads_object


@pytest.mark.parametrize(
    ("raw", "status", "fragment"),
    [
        (b"", 400, "empty"),
        (b"{oops", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object, got list"),
        (b'{"messages": []}', 400, "`model` is required"),
        (b'{"model": 3}', 400, "`model` is required"),
        (b"\xff\xfe", 400, "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "nested deeper than 64"),
        (b'{"model": "auto", "x": ' + b"[" * 65 + b"]" * 65 + b"}", 400, "nested deeper than 64"),
        (b'{"model": "auto", "max_tokens": ' + b"9" * 5000 + b"}", 400, "more than 100 digits"),
        (b'{"model": "auto", "max_tokens": 1' + b"0" * 101 + b"}", 400, "more than 100 digits"),
        (b'{"model": "auto", "temperature": 1.' + b"5" * 200 + b"}", 400, "more than 100 digits"),
        (b'{"model": "auto", "temperature": NaN}', 400, "NaN is not a JSON number"),
        (b'{"model": "auto"} x', 400, "Extra data"),
        (b'{"model": "auto",}', 400, "not valid JSON"),
    ],
)
def test_parse_body_rejects(raw: bytes, status: int, fragment: str) -> None:
    with pytest.raises(BadRequest) as exc:
        parse_body(raw)
    assert exc.value.status == status and fragment in exc.value.message


def test_json_limits_leave_ordinary_bodies_alone() -> None:
    # brackets and long digit runs inside strings are text, not structure or numbers
    text = "[" * 500 + "1" * 500
    raw = json.dumps({"model": "auto", "prompt": text, "max_tokens": 7, "t": -0.5e-3}).encode()
    body = parse_body(raw).obj
    assert body["prompt"] == text and body["max_tokens"] == 7 and body["t"] == -0.5e-3
    deep = {"model": "auto", "x": json.loads("[" * 63 + "]" * 63)}
    assert parse_body(json.dumps(deep).encode()).obj == deep  # 64 levels with the top object


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (None, True),
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("Application/JSON", True),
        ("application/vnd.api+json", True),
        ("text/plain", False),
        ("application/x-www-form-urlencoded", False),
        ("multipart/form-data; boundary=x", False),
        ("application/octet-stream", False),
    ],
)
def test_content_type(value: str | None, ok: bool) -> None:
    if ok:
        check_content_type(value)
    else:
        with pytest.raises(BadRequest) as exc:
            check_content_type(value)
        assert exc.value.status == 415


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
        # the top-level key spelled with an escape, and a nested plain "model" with the same value
        b'{"\\u006dodel": "auto", "metadata": {"model": "auto"}, "messages": []}',
        b'{"metadata": {"model": "auto"}, "\\u006dodel":"auto"}',
        # non-ASCII before the member: character and byte offsets differ
        '{"messages": [{"role": "user", "content": "héllo ✓ 🚀"}], "model": "auto"}'.encode(),
        # a duplicated key: json keeps the last one, and so must the rewrite
        b'{"model": "e0", "model": "auto"}',
    ],
)
def test_rewrite_model_changes_only_the_model(raw: bytes) -> None:
    parsed = parse_body(raw)
    body = json.loads(raw)
    assert parsed.obj == body
    out = rewrite_model(raw, parsed, "served")
    assert json.loads(out) == {**body, "model": "served"}
    assert parsed.obj["model"] == "auto"  # the parsed body is not mutated (a retry rewrites again)
    assert rewrite_model(raw, parsed, None) is raw
    assert rewrite_model(raw, parsed, "auto") is raw
    if raw.count(b"odel") == raw.count(b'"model": "auto"') == 1:
        assert out == raw.replace(b'"model": "auto"', b'"model": "served"')  # spliced, not re-serialised


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "stream": true}',
        b'{ "messages" : [ {"content": "{\\"model\\": 1}"} ] ,\n "model" : "auto" , "n" : 1 }',
        b'{"n": 1, "model": "x", "tools": [{"model": "auto"}]}',  # the key twice in the text: full walk
        b'{"\\u006dodel": "auto", "x": "\\u00e9"}',  # an escape in the text: full walk
        b'{"model": "a", "model": "b"}',  # a duplicate: no span
        b'{"messages": []}',  # absent
        b"{}",
        '{"é": "ü", "model": "auto"}'.encode(),
    ],
)
def test_model_span_with_or_without_the_early_stop_matches_the_full_walk(raw: bytes) -> None:
    obj = loads_object(raw)
    full = _member_spans(obj.text, obj._scan)  # every member, no early stop
    assert obj.span("model") == full.get("model")
    span = obj.span("model")
    if span is not None:
        assert json.loads(obj.text[span[0] : span[1]]) == obj.value["model"]


def test_the_walk_stops_at_the_model_key_when_it_is_the_only_spelling() -> None:
    # a value after the model member that the walk would choke on (the decoder accepted the text, then it
    # was changed under it): only a walk that stops at "model" gets through
    obj = loads_object(b'{"model": "auto", "n": 1}')
    obj.text = obj.text.replace('"n": 1', '"n": ?')
    assert obj.span("model") == (10, 16)
    escaped = loads_object(b'{"\\u006dodel": "auto", "n": 1}')
    escaped.text = escaped.text.replace('"n": 1', '"n": ?')
    with pytest.raises(StopIteration):  # the escaped spelling needs the full walk
        escaped.span("model")


def test_rewrite_splices_in_place_keeping_everything_else() -> None:
    raw = '{"metadata": {"model": "auto"}, "\\u006dodel" : "auto" ,"p": "ü"}'.encode()
    out = rewrite_model(raw, parse_body(raw), "served")
    assert out == '{"metadata": {"model": "auto"}, "\\u006dodel" : "served" ,"p": "ü"}'.encode()


def test_request_head_takes_the_first_of_repeated_headers_and_only_the_forwarded_ones() -> None:
    headers = [
        (b"host", b"x"),
        (b"content-type", b"application/json"),
        (b"content-type", b"text/plain"),
        (b"content-length", b"12"),
        (b"x-request-id", b"first"),
        (b"x-request-id", b"second"),
        (b"authorization", b"Bearer t"),
        (b"cookie", b"secret"),
    ]
    head = request_head(headers, frozenset({b"authorization", b"x-request-id", b"traceparent"}))
    assert head.content_type == "application/json"
    assert head.content_length == b"12"
    assert head.forward == {"x-request-id": "first", "authorization": "Bearer t"}


def _receiver(*messages: dict[str, object]) -> object:
    queue = list(messages)

    async def receive() -> dict[str, object]:
        return queue.pop(0)

    return receive


async def test_read_body_asgi_joins_parts_and_enforces_the_limit() -> None:
    parts = (
        {"type": "http.request", "body": b'{"a":', "more_body": True},
        {"type": "http.request", "body": b"1}"},
    )
    assert await read_body_asgi(_receiver(*parts), 100, None) == b'{"a":1}'
    with pytest.raises(BadRequest) as exc:
        await read_body_asgi(_receiver(*parts), 6, None)
    assert exc.value.status == 413 and "limit of 6 bytes" in exc.value.message
    with pytest.raises(BadRequest) as exc:  # refused from the declared length, before reading anything
        await read_body_asgi(_receiver(), 6, b"7")
    assert exc.value.status == 413 and "7 bytes" in exc.value.message


async def test_read_body_asgi_reports_a_client_that_left_mid_body() -> None:
    receive = _receiver(
        {"type": "http.request", "body": b"{", "more_body": True}, {"type": "http.disconnect"}
    )
    with pytest.raises(BadRequest) as exc:
        await read_body_asgi(receive, 100, None)
    assert exc.value.status == 499
