"""One streamed OpenAI request over geventhttpclient, timed line by line as the bytes arrive.

Why line by line: `iter_content(1024)` waits until 1 KB has arrived, which on a token stream means
~100 ms of extra TTFT; `readline` returns as soon as one SSE line is complete. Times are perf_counter
deltas from just before the request is sent.

Definitions (vLLM `benchmark_serving` compatible):
- TTFT: send -> the first chunk that carries generated text (role-only / empty chunks do not count);
- ITL: gaps between successive text-bearing chunks. When the network coalesces several chunks into one
  read, their gaps are ~0 (the bytes did arrive together); a chunk holding several tokens counts once;
- E2E: send -> the end of the stream (`data: [DONE]`, or the end of the body after a `finish_reason` for
  servers that send no `[DONE]`, e.g. transformers serve);
- TPOT: (E2E - TTFT) / (output tokens - 1), filled by RequestRecord.finish_derived().
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from geventhttpclient import HTTPClient

from system.records import RequestRecord
from system.tokens import count_tokens

ROUTER_HEADERS = ("x-router-expert", "x-router-cluster", "x-router-policy", "x-router-overhead-ms")
MAX_ERROR_CHARS = 500


def _error_message(raw: bytes) -> str:
    """The `error.message` of an OpenAI error body, else the body's first characters."""
    text = raw.decode("utf-8", "replace").strip()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return text[:MAX_ERROR_CHARS] or "(empty body)"
    if isinstance(obj, dict):
        err = obj.get("error", obj.get("detail"))
        if isinstance(err, dict) and "message" in err:
            return str(err["message"])[:MAX_ERROR_CHARS]
        if err is not None:
            return str(err)[:MAX_ERROR_CHARS]
    return text[:MAX_ERROR_CHARS]


def _chunk_text(obj: dict[str, Any]) -> str:
    parts = []
    for ch in obj.get("choices") or ():
        if not isinstance(ch, dict):
            continue
        delta = ch.get("delta")
        if isinstance(delta, dict):
            parts.append(delta.get("content") or "")
            parts.append(delta.get("reasoning_content") or "")
        parts.append(ch.get("text") or "")
    return "".join(p for p in parts if isinstance(p, str))


def _apply_headers(rec: RequestRecord, resp: Any) -> None:
    expert, cluster, policy, overhead = (resp.get(h) for h in ROUTER_HEADERS)
    rec.expert = str(expert or "")
    rec.policy = str(policy or "")
    try:
        rec.cluster = int(cluster) if cluster not in (None, "") else -1
    except ValueError:
        rec.cluster = -1
    try:
        rec.gateway_overhead_ms = float(overhead) if overhead not in (None, "") else math.nan
    except ValueError:
        rec.gateway_overhead_ms = math.nan


def _apply_ground_truth(rec: RequestRecord, timing: dict[str, Any]) -> None:
    def f(key: str) -> float:
        v = timing.get(key)
        return float(v) if isinstance(v, int | float) else math.nan

    rec.gt_arrival_ts = f("arrival_ts")
    rec.gt_first_token_ts = f("first_token_ts")
    rec.gt_last_token_ts = f("last_token_ts")
    out = timing.get("output_tokens")
    rec.gt_output_tokens = int(out) if isinstance(out, int | float) else -1


def stream_request(
    client: HTTPClient, path: str, body: dict[str, Any], rec: RequestRecord, prompt_text: str
) -> bool:
    """Send `body` to `path`, read the SSE stream, fill `rec` (times, tokens, headers, truth, outcome).

    Returns False when the connection is in an unknown state and the caller must drop it.
    """
    payload = json.dumps(body).encode()
    headers = {
        "Content-Type": "application/json",
        "Accept": "text/event-stream",
        "Accept-Encoding": "identity",  # a compressed stream would be buffered
        "x-request-id": rec.request_id,
    }
    rec.start_ts = time.time()
    t0 = time.perf_counter()
    last_t = t0
    first_t: float | None = None
    prev_t = 0.0
    texts: list[str] = []
    usage: dict[str, Any] | None = None
    timing: dict[str, Any] | None = None
    done = False
    finished = (
        False  # a choice carried finish_reason: servers that omit `[DONE]` (transformers serve) end here
    )
    try:
        resp = client.request("POST", path, body=payload, headers=headers)
    except Exception as e:
        rec.e2e_s = time.perf_counter() - t0
        rec.end_ts = rec.start_ts + rec.e2e_s
        rec.error = f"{type(e).__name__}: {e}"[:MAX_ERROR_CHARS]
        return False
    rec.status = int(resp.status_code)
    _apply_headers(rec, resp)
    try:
        if rec.status != 200:
            rec.error = f"HTTP {rec.status}: {_error_message(resp.read())}"
            return True
        while True:
            line = resp.readline(b"\n")
            last_t = time.perf_counter()
            if not line:
                break  # end of body
            line = line.strip()
            if not line.startswith(b"data:"):
                continue  # blank separator, comment (":"), "event:" or "id:" line
            data = line[5:].strip()
            if data == b"[DONE]":
                done = True
                resp.read()  # the chunked-encoding terminator: completes the message, frees the socket
                break
            try:
                obj = json.loads(data)
            except json.JSONDecodeError:
                rec.error = f"invalid JSON in stream: {data[:200]!r}"
                return False
            if not isinstance(obj, dict):
                continue
            if obj.get("error") is not None:
                rec.error = f"error event in stream: {_error_message(data)}"
                return False
            text = _chunk_text(obj)
            if text:
                if first_t is None:
                    first_t = last_t
                else:
                    rec.itl_s.append(last_t - prev_t)
                prev_t = last_t
                texts.append(text)
            if any(isinstance(c, dict) and c.get("finish_reason") for c in obj.get("choices") or ()):
                finished = True
            if obj.get("usage"):
                usage = obj["usage"]
            if isinstance(obj.get("sim_timing"), dict):
                timing = obj["sim_timing"]
    except Exception as e:
        last_t = time.perf_counter()
        rec.error = f"stream interrupted after {len(texts)} chunk(s): {type(e).__name__}: {e}"
        rec.error = rec.error[:MAX_ERROR_CHARS]
        return False
    finally:
        rec.e2e_s = last_t - t0
        rec.end_ts = rec.start_ts + rec.e2e_s
        if first_t is not None:
            rec.ttft_s = first_t - t0
        if timing is not None:
            _apply_ground_truth(rec, timing)
        _apply_usage(rec, usage, prompt_text, "".join(texts), len(texts))
    if not (done or finished):
        rec.error = f"stream ended without [DONE] after {len(texts)} chunk(s)"
        return False
    if first_t is None:
        rec.error = "stream carried no generated text"
        return True
    rec.success = True
    return True


def _apply_usage(
    rec: RequestRecord, usage: dict[str, Any] | None, prompt_text: str, output: str, chunks: int = 0
) -> None:
    if usage and isinstance(usage.get("completion_tokens"), int):
        rec.output_tokens = int(usage["completion_tokens"])
        rec.prompt_tokens = int(usage.get("prompt_tokens") or count_tokens(prompt_text))
        rec.tokens_from_usage = True
    else:
        # no usage: servers that ignore include_usage (transformers serve) stream one token per content
        # chunk, which beats re-tokenising their text with our approximate tokenizer
        rec.output_tokens = chunks or count_tokens(output)
        rec.prompt_tokens = count_tokens(prompt_text)
        rec.tokens_from_usage = False
