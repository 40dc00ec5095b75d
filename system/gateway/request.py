"""Request parsing for the hot path: size-capped body read, one JSON parse, the text to classify."""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.requests import ClientDisconnect, Request

# `"model": "<json string>"` anywhere in a body; more than one match (a nested "model" key, or the text inside
# a string) means the splice in rewrite_model is not safe and the body is re-serialised instead
_MODEL_MEMBER = re.compile(rb'"model"\s*:\s*"((?:[^"\\]|\\.)*)"')
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


class BadRequest(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything over `limit` bytes without buffering it."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BadRequest(413, f"request body exceeds the limit of {limit} bytes")
            parts.append(chunk)
    except ClientDisconnect:
        raise BadRequest(499, "client disconnected while sending the body") from None
    return b"".join(parts)


def parse_body(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise BadRequest(400, "request body is empty; expected a JSON object")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(400, f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest(400, f"request body must be a JSON object, got {type(body).__name__}")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest(400, "`model` is required: 'auto' to route, or an expert name", "model")
    return body


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


def rewrite_model(raw: bytes, body: dict[str, Any], model: str | None) -> bytes:
    """The request bytes with `model` replaced, when the upstream would not know the client's name for it
    ("auto", "e0"). Splices the one `"model": "..."` member in place when it is unambiguous (a regex over a
    few hundred bytes), and re-serialises the parsed body otherwise."""
    if model is None or body["model"] == model:
        return raw
    found = _MODEL_MEMBER.findall(raw)
    if len(found) == 1:
        try:
            unambiguous = json.loads(b'"' + found[0] + b'"') == body["model"]
        except ValueError:
            unambiguous = False
        if unambiguous:
            member = b'"model":' + json.dumps(model).encode()
            return _MODEL_MEMBER.sub(lambda _m: member, raw, count=1)
    body = {**body, "model": model}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
