"""Request parsing for the hot path: size-capped body read, one JSON parse, the text to classify."""

from __future__ import annotations

from typing import Any, NamedTuple

from system.jsonbody import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_DIGITS,
    JsonBodyError,
    JsonObject,
    loads_object,
    replace_member,
)

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


class BadRequest(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


async def read_body_asgi(receive: Any, limit: int, declared: bytes | None) -> bytes:
    """The request body from ASGI `receive`, refusing (413) anything over `limit` bytes without buffering it;
    `declared` is the raw Content-Length header (refused at once when it is over the limit)."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"request body of {declared.decode()} bytes exceeds the limit of {limit} bytes")
    parts: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] != "http.request":  # http.disconnect
            raise BadRequest(499, "client disconnected while sending the body")
        body = msg.get("body", b"")
        if body:
            size += len(body)
            if size > limit:
                raise BadRequest(413, f"request body exceeds the limit of {limit} bytes")
            parts.append(body)
        if not msg.get("more_body", False):
            break
    return parts[0] if len(parts) == 1 else b"".join(parts)


class RequestHead(NamedTuple):
    content_type: str | None
    content_length: bytes | None
    forward: dict[str, str]  # the headers passed on to the expert


def request_head(headers: list[tuple[bytes, bytes]], forward: frozenset[bytes]) -> RequestHead:
    """What the relay needs of the request headers, in one pass over the ASGI list (names are lower-case;
    the first of repeated headers counts, as Starlette's `headers.get`)."""
    ctype: str | None = None
    clen: bytes | None = None
    fwd: dict[str, str] = {}
    for k, v in headers:
        if k == b"content-type":
            if ctype is None:
                ctype = v.decode("latin-1")
        elif k == b"content-length":
            if clen is None:
                clen = v
        elif k in forward:
            name = k.decode("latin-1")
            if name not in fwd:
                fwd[name] = v.decode("latin-1")
    return RequestHead(ctype, clen, fwd)


class ParsedBody(NamedTuple):
    obj: dict[str, Any]  # the parsed request
    parsed: JsonObject  # with the positions of its top-level members, for rewrite_model


def check_content_type(value: str | None) -> None:
    """JSON bodies only: `application/json` (any parameters) or a `+json` type. A request without a
    Content-Type is read as JSON, as the OpenAI API does; anything else is 415."""
    if value is None:
        return
    media = value.split(";", 1)[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        return
    raise BadRequest(415, f"Content-Type {media or value!r} is not supported; send application/json")


def parse_body(
    raw: bytes, *, max_depth: int = DEFAULT_MAX_DEPTH, max_digits: int = DEFAULT_MAX_DIGITS
) -> ParsedBody:
    if not raw:
        raise BadRequest(400, "request body is empty; expected a JSON object")
    try:
        parsed = loads_object(raw, max_depth=max_depth, max_digits=max_digits)
    except JsonBodyError as e:
        raise BadRequest(400, e.message) from None
    if not isinstance(parsed, JsonObject):
        raise BadRequest(400, f"request body must be a JSON object, got {type(parsed).__name__}")
    body = parsed.value
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest(400, "`model` is required: 'auto' to route, or an expert name", "model")
    return ParsedBody(body, parsed)


def prompt_text(body: dict[str, Any], path: str, max_chars: int) -> str:
    """What the classifier sees: the user turns of a chat, or the completion prompt."""
    if path == CHAT:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest(400, "`messages` must be a non-empty list", "messages")
        parts: list[str] = []
        for m in messages:
            if not isinstance(m, dict) or m.get("role") != "user":
                continue
            content = m.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):  # content parts: keep the text ones
                parts.extend(
                    p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
                )
        text = "\n".join(parts)
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            text = prompt
        elif isinstance(prompt, list) and prompt:
            text = "\n".join(p for p in prompt if isinstance(p, str))  # token-id prompts classify as ""
        else:
            raise BadRequest(400, "`prompt` must be a string or a non-empty list", "prompt")
    return text[:max_chars]


def rewrite_model(raw: bytes, body: ParsedBody, model: str | None) -> bytes:
    """The request bytes with the top-level `model` replaced, when the upstream would not know the client's
    name for it ("auto", "e0"). The value is replaced at the position the parser found it (so a nested
    `model` key, or a key spelled `"\\u006dodel"`, is handled right); everything else is sent unchanged.
    A duplicated top-level `model` key makes the body re-serialised from the parsed object."""
    if model is None or body.obj["model"] == model:
        return raw
    return replace_member(raw, body.parsed, "model", model)
