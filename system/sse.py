"""The one reader of OpenAI streaming (SSE) responses: Locust, the bench clients and the replay check use it.

Transport-free (no gevent, no asyncio, no locust import): the caller reads the body its own way and hands
the reader whole lines (`feed_line`, Locust's `readline`) or arbitrary byte chunks (`feed`, aiohttp's
`iter_any`) with the time they arrived. Definitions (vLLM `benchmark_serving` compatible):

- a *content chunk* is an event whose choices carry generated text (role-only / empty deltas do not count);
- TTFT: send -> the first content chunk; chunk gaps (`itl_s`): between successive content chunks (chunks the
  network delivers in one read get ~0 gaps: they did arrive together);
- the stream is complete on `data: [DONE]`, or at the end of the body after a `finish_reason` (servers that
  send no `[DONE]`, e.g. transformers serve);
- tokens per content chunk (`chunk_tokens`): counted with `system.tokens.count_tokens` (at least 1 per
  chunk, exact for the simulator's one-token words), then scaled to sum to the server's `usage` if sent.

`lazy=True` is for load clients that need only TTFT, E2E and the totals at tens of thousands of events per
second (about 1 us per event instead of ~10): events after the first content chunk are not parsed as they
arrive; the last few are parsed when the stream ends (usage, sim_timing, finish_reason, an error event).
Chunk times and per-chunk tokens are then not kept.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import deque
from typing import Any

from system.tokens import count_tokens

MAX_ERROR_CHARS = 500
ROUTER_HEADERS = ("x-router-expert", "x-router-cluster", "x-router-policy", "x-router-overhead-ms")


def error_message(raw: bytes | str) -> str:
    """The `error.message` of an OpenAI error body, else the body's first characters."""
    text = (raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw).strip()
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


def chunk_text(obj: dict[str, Any]) -> str:
    """Generated text of one event (chat `delta.content`/`reasoning_content`, or completions `text`)."""
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


def scale_to_total(counts: list[int], total: int) -> list[int]:
    """`counts` scaled to sum to `total` (largest remainder), so per-chunk tokens agree with `usage`."""
    s = sum(counts)
    if s == total or not counts or total < 0:
        return list(counts)
    if s == 0:
        base = [total // len(counts)] * len(counts)
        for i in range(total - sum(base)):
            base[i] += 1
        return base
    exact = [c * total / s for c in counts]
    out = [math.floor(x) for x in exact]
    order = sorted(range(len(counts)), key=lambda i: exact[i] - out[i], reverse=True)
    for i in order[: total - sum(out)]:
        out[i] += 1
    return out


class SSEReader:
    """State of one streamed response as it is read; times are the caller's clock (e.g. perf_counter)."""

    __slots__ = (
        "_buf",
        "_tail",
        "chunk_times",
        "chunk_tokens",
        "chunks",
        "done",
        "error",
        "finished",
        "last_t",
        "lazy",
        "t0",
        "texts",
        "timing",
        "usage",
    )

    def __init__(self, t0: float, *, lazy: bool = False) -> None:
        self.t0 = t0  # when the request was sent
        self.lazy = lazy
        self.last_t = t0  # when the last bytes were read
        self.chunks = 0  # content chunks seen (lazy: the first one, then every data event until the end)
        self.chunk_times: list[float] = []  # arrival of each content chunk
        self.chunk_tokens: list[int] = []  # raw token estimate of each content chunk
        self.texts: list[str] = []
        self.usage: dict[str, Any] | None = None
        self.timing: dict[str, Any] | None = None  # the simulator's `sim_timing` (docs/CONTRACTS.md)
        self.done = False  # `data: [DONE]` seen
        self.finished = False  # a choice carried finish_reason
        self.error = ""  # set on an error event or invalid JSON: the stream is then unusable
        self._buf = b""
        self._tail: deque[bytes] = deque(maxlen=4)  # lazy: the last unparsed events

    # ------------------------------------------------------------------ input
    def feed(self, data: bytes, t: float) -> None:
        """Any bytes of the body, in order; complete lines are parsed now, a partial one waits."""
        self.last_t = t
        buf = self._buf + data
        *lines, self._buf = buf.split(b"\n")
        for line in lines:
            if self.done or self.error:
                break
            self.feed_line(line, t)

    def end(self, t: float) -> None:
        """The body ended: parse a last line that had no newline (and, lazy, the events kept for the end)."""
        self.last_t = t
        if self._buf and not (self.done or self.error):
            line, self._buf = self._buf, b""
            self.feed_line(line, t)
        self._parse_tail()

    def _parse_tail(self) -> None:
        tail, self._tail = list(self._tail), deque(maxlen=4)
        for data in tail:
            if not self.error:
                self._event(data, self.last_t, content=False)

    def feed_line(self, line: bytes, t: float) -> None:
        """One SSE line (with or without its newline) that arrived at `t`."""
        self.last_t = t
        line = line.strip()
        if not line.startswith(b"data:"):
            return  # blank separator, comment (":"), "event:" or "id:" line
        data = line[5:].strip()
        if data == b"[DONE]":
            self.done = True
            self._parse_tail()
            return
        if self.lazy and self.chunks:
            self.chunks += 1  # counted now, corrected for the non-content events of the tail at the end
            self._tail.append(data)
            return
        self._event(data, t, content=True)

    def _event(self, data: bytes, t: float, *, content: bool) -> None:
        try:
            obj = json.loads(data)
        except json.JSONDecodeError:
            self.error = f"invalid JSON in stream: {data[:200]!r}"
            return
        if not isinstance(obj, dict):
            return
        if obj.get("error") is not None:
            self.error = f"error event in stream: {error_message(data)}"
            return
        text = chunk_text(obj)
        if text and content:
            self.chunks += 1
            self.chunk_times.append(t)
            self.chunk_tokens.append(max(1, count_tokens(text)))
            self.texts.append(text)
        elif not text and not content:
            self.chunks -= 1  # a lazily counted event that carried no text (usage, role, empty)
        choices = obj.get("choices") or ()
        if any(isinstance(c, dict) and c.get("finish_reason") for c in choices):
            self.finished = True
        if obj.get("usage"):
            self.usage = obj["usage"]
        if isinstance(obj.get("sim_timing"), dict):
            self.timing = obj["sim_timing"]

    # ------------------------------------------------------------------ results
    @property
    def complete(self) -> bool:
        return (self.done or self.finished) and not self.error

    @property
    def first_t(self) -> float | None:
        return self.chunk_times[0] if self.chunk_times else None

    @property
    def text(self) -> str:
        return "".join(self.texts)

    @property
    def ttft_s(self) -> float:
        return self.chunk_times[0] - self.t0 if self.chunk_times else math.nan

    @property
    def gaps_s(self) -> list[float]:
        ts = self.chunk_times
        return [b - a for a, b in itertools.pairwise(ts)]

    @property
    def usage_tokens(self) -> int | None:
        u = self.usage
        if u and isinstance(u.get("completion_tokens"), int):
            return int(u["completion_tokens"])
        return None

    @property
    def output_tokens(self) -> int:
        """The server's `usage` count, else the per-chunk estimate."""
        n = self.usage_tokens
        if n is not None:
            return n
        return self.chunks if self.lazy else sum(self.chunk_tokens)

    def tokens_per_chunk(self) -> list[int]:
        """Tokens in each content chunk, summing to `output_tokens`."""
        return scale_to_total(self.chunk_tokens, self.output_tokens)

    def fill_record(self, rec: Any, prompt_text: str) -> None:
        """Times, tokens and truth into a `system.records.RequestRecord` (outcome/error left to the caller).

        `rec.start_ts` must be the wall-clock send time matching `t0`.
        """
        rec.e2e_s = self.last_t - self.t0
        rec.end_ts = rec.start_ts + rec.e2e_s
        rec.ttft_s = self.ttft_s
        rec.itl_s = self.gaps_s
        rec.chunk_tokens = self.tokens_per_chunk()
        if self.timing is not None:
            apply_ground_truth(rec, self.timing)
        n = self.usage_tokens
        if n is not None:
            rec.output_tokens = n
            rec.prompt_tokens = int((self.usage or {}).get("prompt_tokens") or count_tokens(prompt_text))
            rec.tokens_from_usage = True
        else:
            # no usage: servers that ignore include_usage (transformers serve) stream one token per content
            # chunk, so the chunk count beats re-tokenising their text with our approximate tokenizer
            rec.output_tokens = len(self.chunk_times) or count_tokens(self.text)
            rec.chunk_tokens = scale_to_total(self.chunk_tokens, rec.output_tokens)
            rec.prompt_tokens = count_tokens(prompt_text)
            rec.tokens_from_usage = False


def apply_ground_truth(rec: Any, timing: dict[str, Any]) -> None:
    """The simulator's `sim_timing` into the record's `gt_*` fields."""

    def f(key: str) -> float:
        v = timing.get(key)
        return float(v) if isinstance(v, int | float) else math.nan

    rec.gt_arrival_ts = f("arrival_ts")
    rec.gt_first_token_ts = f("first_token_ts")
    rec.gt_last_token_ts = f("last_token_ts")
    out = timing.get("output_tokens")
    rec.gt_output_tokens = int(out) if isinstance(out, int | float) else -1


def apply_router_headers(rec: Any, get: Any) -> None:
    """The gateway's `x-router-*` response headers into the record; `get(name)` reads one header."""
    expert, cluster, policy, overhead = (get(h) for h in ROUTER_HEADERS)
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
