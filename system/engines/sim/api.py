"""OpenAI request validation (vLLM-style 400/404 errors) and response/SSE body builders for the sim."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, ClassVar

from system import jsonbody
from system.engines.sim.scheduler import SimRequest
from system.engines.sim.textgen import chat_prompt_tokens, completion_prompt_tokens, message_text

CHAT_ROLES = {"system", "user", "assistant", "tool", "developer", "function"}


class ApiError(Exception):
    """An error answered with OpenAI's error body and an HTTP status."""

    TYPES: ClassVar[dict[int, str]] = {
        400: "BadRequestError",
        404: "NotFoundError",
        405: "MethodNotAllowed",
        413: "RequestTooLarge",
        415: "UnsupportedMediaType",
    }

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    def body(self) -> bytes:
        err = {"message": self.message, "type": self.TYPES.get(self.status, "Error"), "param": self.param}
        err["code"] = self.status
        return json.dumps({"error": err}).encode()


@dataclass
class ParsedRequest:
    kind: str  # "chat" | "completion"
    model: str
    stream: bool
    include_usage: bool
    prompt_tokens: int
    max_tokens: int
    min_tokens: int
    ignore_eos: bool
    seed_key: str  # what the natural output length is seeded by


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _opt_int(body: dict[str, Any], key: str) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if not _is_int(v):
        raise ApiError(400, f"'{key}' must be an integer, got {type(v).__name__}", key)
    return int(v)


def _opt_bool(body: dict[str, Any], key: str, default: bool = False) -> bool:
    v = body.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise ApiError(400, f"'{key}' must be a boolean, got {type(v).__name__}", key)
    return v


def _opt_number(body: dict[str, Any], key: str) -> None:
    v = body.get(key)
    if v is not None and (not isinstance(v, int | float) or isinstance(v, bool)):
        raise ApiError(400, f"'{key}' must be a number, got {type(v).__name__}", key)


def _chat_prompt(body: dict[str, Any]) -> tuple[int, str]:
    msgs = body.get("messages")
    if msgs is None:
        raise ApiError(400, "'messages' is a required field", "messages")
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "'messages' must be a non-empty list of message objects", "messages")
    contents: list[str] = []
    for i, msg in enumerate(msgs):
        if not isinstance(msg, dict):
            raise ApiError(400, f"messages[{i}] must be an object", "messages")
        role = msg.get("role")
        if not isinstance(role, str) or role not in CHAT_ROLES:
            raise ApiError(
                400, f"messages[{i}].role must be one of {sorted(CHAT_ROLES)}, got {role!r}", "messages"
            )
        content = msg.get("content")
        if content is not None and not isinstance(content, str | list):
            raise ApiError(400, f"messages[{i}].content must be a string or a list of parts", "messages")
        if isinstance(content, list) and not all(isinstance(p, dict) for p in content):
            raise ApiError(400, f"messages[{i}].content parts must be objects", "messages")
        contents.append(message_text(content))
    return chat_prompt_tokens(contents), "\x1e".join(contents)


def _completion_prompt(body: dict[str, Any]) -> tuple[int, str]:
    prompt = body.get("prompt")
    if prompt is None:
        raise ApiError(400, "'prompt' is a required field", "prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        return completion_prompt_tokens(prompt), prompt
    if isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt):
        return len(prompt), ",".join(map(str, prompt))  # token ids: one token each
    if isinstance(prompt, list) and len(prompt) > 1:
        raise ApiError(
            400, "batched prompts (a list of several prompts) are not supported by the sim", "prompt"
        )
    raise ApiError(400, "'prompt' must be a string, a list of one string, or a list of token ids", "prompt")


def check_content_type(headers: list[tuple[bytes, bytes]]) -> None:
    """JSON only (or no Content-Type at all, read as JSON); anything else is 415."""
    for name, value in headers:
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            if media != b"application/json" and not media.endswith(b"+json"):
                shown = media.decode("latin-1")
                raise ApiError(415, f"Content-Type {shown!r} is not supported; send application/json")
            return


def parse_request(kind: str, raw: bytes, model_name: str, max_model_len: int) -> ParsedRequest:
    """Validate an OpenAI request body the way vLLM does; raise ApiError with a clear message otherwise."""
    try:
        body = jsonbody.loads(raw)  # depth and digit limits: 400, never RecursionError or a 500
    except jsonbody.JsonBodyError as e:
        raise ApiError(400, e.message) from None
    if not isinstance(body, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(body).__name__}")
    model = body.get("model", model_name)
    if model is None:
        model = model_name
    if not isinstance(model, str):
        raise ApiError(400, "'model' must be a string", "model")
    if model != model_name:
        raise ApiError(404, f"The model `{model}` does not exist.", "model")
    prompt_tokens, key = _chat_prompt(body) if kind == "chat" else _completion_prompt(body)
    stream = _opt_bool(body, "stream")
    opts = body.get("stream_options")
    include_usage = False
    if opts is not None:
        if not stream:
            raise ApiError(400, "Stream options can only be defined when `stream=True`.", "stream_options")
        if not isinstance(opts, dict):
            raise ApiError(400, "'stream_options' must be an object", "stream_options")
        include_usage = _opt_bool(opts, "include_usage")
    n = _opt_int(body, "n")
    if n is not None and n != 1:
        raise ApiError(400, "the sim supports n=1 only", "n")
    for key_num in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        _opt_number(body, key_num)
    max_tokens = _opt_int(body, "max_completion_tokens") if kind == "chat" else None
    if max_tokens is None:
        max_tokens = _opt_int(body, "max_tokens")
    min_tokens = _opt_int(body, "min_tokens") or 0
    ignore_eos = _opt_bool(body, "ignore_eos")
    seed = _opt_int(body, "seed")
    if prompt_tokens >= max_model_len:
        raise ApiError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, your request has "
            f"{prompt_tokens} input tokens. Please reduce the length of the input messages.",
            "messages" if kind == "chat" else "prompt",
        )
    if max_tokens is None:
        max_tokens = max_model_len - prompt_tokens
    elif max_tokens < 1:
        raise ApiError(400, f"max_tokens must be at least 1, got {max_tokens}.", "max_tokens")
    elif prompt_tokens + max_tokens > max_model_len:
        where = "messages" if kind == "chat" else "prompt"
        raise ApiError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the {where}, {max_tokens} in the "
            "completion). Please reduce the length of the messages or completion.",
            "max_tokens",
        )
    if min_tokens < 0:
        raise ApiError(400, f"min_tokens must be >= 0, got {min_tokens}", "min_tokens")
    if min_tokens > max_tokens:
        raise ApiError(400, f"min_tokens ({min_tokens}) must be <= max_tokens ({max_tokens})", "min_tokens")
    seed_key = f"seed={seed}" if seed is not None else key
    return ParsedRequest(
        kind, model, stream, include_usage, prompt_tokens, max_tokens, min_tokens, ignore_eos, seed_key
    )


def sim_timing(req: SimRequest) -> dict[str, Any]:
    return {
        "arrival_ts": req.arrival_ts,
        "first_scheduled_ts": req.first_scheduled_ts,
        "first_token_ts": req.first_token_ts,
        "last_token_ts": req.last_token_ts,
        "prompt_tokens": req.prompt_tokens,
        "output_tokens": req.num_output,
        "preemptions": req.preemptions,
    }


def usage(req: SimRequest) -> dict[str, int]:
    return {
        "prompt_tokens": req.prompt_tokens,
        "completion_tokens": req.num_output,
        "total_tokens": req.prompt_tokens + req.num_output,
    }


class Responder:
    """Builds one request's bodies. Stream chunks are byte templates around the (escape-free) token text."""

    def __init__(self, kind: str, model_json: str, model: str) -> None:
        self.kind = kind
        self.model = model
        self.created = int(time.time())
        if kind == "chat":
            self.id = f"chatcmpl-{uuid.uuid4().hex}"
            self.obj = "chat.completion.chunk"
        else:
            self.id = f"cmpl-{uuid.uuid4().hex}"
            self.obj = "text_completion"
        head = (
            f'data: {{"id":"{self.id}","object":"{self.obj}","created":{self.created},"model":{model_json},'
        )
        if kind == "chat":
            self._pre = (head + '"choices":[{"index":0,"delta":{"content":"').encode()
            self._suf = b'"},"logprobs":null,"finish_reason":null}]}\n\n'
            self.role_chunk = (
                head + '"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
                '"logprobs":null,"finish_reason":null}]}\n\n'
            ).encode()
        else:
            self._pre = (head + '"choices":[{"index":0,"text":"').encode()
            self._suf = b'","logprobs":null,"finish_reason":null,"stop_reason":null}]}\n\n'
            self.role_chunk = b""

    def chunk(self, text: str) -> bytes:
        # synthetic tokens are plain ASCII words: no JSON escaping needed
        return self._pre + text.encode() + self._suf

    def _event(self, payload: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"

    def final_events(self, text: str, req: SimRequest, include_usage: bool) -> bytes:
        """Last content chunk (finish_reason), optional usage chunk, sim_timing in the last one, [DONE]."""
        base = {"id": self.id, "object": self.obj, "created": self.created, "model": self.model}
        if self.kind == "chat":
            choice: dict[str, Any] = {"index": 0, "delta": {"content": text}, "logprobs": None}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "stop_reason": None}
        choice["finish_reason"] = req.finish_reason
        last = {**base, "choices": [choice]}
        if include_usage:
            tail = {**base, "choices": [], "usage": usage(req), "sim_timing": sim_timing(req)}
            return self._event(last) + self._event(tail) + b"data: [DONE]\n\n"
        last["sim_timing"] = sim_timing(req)
        return self._event(last) + b"data: [DONE]\n\n"

    def full_body(self, text: str, req: SimRequest) -> bytes:
        if self.kind == "chat":
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text, "tool_calls": []},
                "logprobs": None,
                "finish_reason": req.finish_reason,
            }
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": req.finish_reason}
            obj = "text_completion"
        body = {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage(req),
            "sim_timing": sim_timing(req),
        }
        return json.dumps(body, separators=(",", ":")).encode()
