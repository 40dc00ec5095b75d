"""A minimal, cheap OpenAI-compatible streaming server (raw asyncio + httptools) for gateway benchmarks.

Every answer is `chunks` tokens: the first after `ttft_ms`, then one every `itl_ms`. Timers are loop
callbacks (no task per stream) so one process serves 1,000 streams on a fraction of a core; the first token
is scheduled at its exact due time, so TTFT carries no tick quantisation (it would swamp a 1 ms overhead).
Responses carry `sim_timing` like the simulator's. A client disconnect stops the answer at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import httptools

from system.tokens import count_tokens, synthetic_token

_STATUS = {200: b"200 OK", 400: b"400 Bad Request", 404: b"404 Not Found", 405: b"405 Method Not Allowed"}


class Upstream:
    """Shared state of one fake server (several ports may share it)."""

    def __init__(self, ttft_s: float, itl_s: float, chunks: int, model: str) -> None:
        self.ttft_s, self.itl_s, self.chunks, self.model = ttft_s, itl_s, chunks, model
        self.running = 0
        self.total = 0
        self.cancelled = 0


class _Answer:
    """One streaming answer driven by loop.call_at callbacks."""

    __slots__ = (
        "conn",
        "created",
        "handle",
        "i",
        "include_usage",
        "kind",
        "model",
        "n",
        "prompt_tokens",
        "t0",
        "t_first",
    )

    def __init__(
        self, conn: _Conn, n: int, kind: str, include_usage: bool, prompt_tokens: int, model: str
    ) -> None:
        self.model = model  # echoed like a server that serves any name, so tests can see rewrites
        self.conn, self.n, self.kind, self.include_usage, self.prompt_tokens = (
            conn,
            n,
            kind,
            include_usage,
            prompt_tokens,
        )
        self.i = 0
        self.t0 = time.time()
        self.t_first = 0.0
        self.created = int(self.t0)
        self.handle: asyncio.TimerHandle | None = None

    def event(self, tok: str) -> bytes:
        if self.kind == "chat":
            d = {"role": "assistant", "content": tok} if self.i == 0 else {"content": tok}
            choice: dict[str, Any] = {"index": 0, "delta": d, "finish_reason": None}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": tok, "finish_reason": None}
            obj = "text_completion"
        ev = {
            "id": "fake-1",
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }
        return b"data: " + json.dumps(ev, separators=(",", ":")).encode() + b"\n\n"

    def step(self) -> None:
        conn = self.conn
        if conn.closed:
            return
        if self.i == 0:
            self.t_first = time.time()
        out = [self.event(synthetic_token(self.i))]
        self.i += 1
        if self.i >= self.n:
            out.append(self.final_events())
            conn.write_chunk(b"".join(out))
            conn.finish_stream()
            return
        conn.write_chunk(out[0])
        loop = conn.loop
        self.handle = loop.call_at(loop.time() + conn.up.itl_s, self.step)

    def timing(self) -> dict[str, Any]:
        return {
            "arrival_ts": self.t0,
            "first_scheduled_ts": self.t0,
            "first_token_ts": self.t_first,
            "last_token_ts": time.time(),
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.n,
            "preemptions": 0,
        }

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.n,
            "total_tokens": self.prompt_tokens + self.n,
        }

    def final_events(self) -> bytes:
        key = "delta" if self.kind == "chat" else "text"
        choice = {"index": 0, key: {} if self.kind == "chat" else "", "finish_reason": "length"}
        fin: dict[str, Any] = {
            "id": "fake-1",
            "object": "chunk",
            "model": self.model,
            "choices": [choice],
        }
        parts = [fin]
        if self.include_usage:
            parts.append({"id": "fake-1", "object": "chunk", "model": self.model, "choices": []})
            parts[-1]["usage"] = self.usage()
        parts[-1]["sim_timing"] = self.timing()
        return b"".join(b"data: " + json.dumps(p).encode() + b"\n\n" for p in parts) + b"data: [DONE]\n\n"

    def whole(self) -> bytes:
        text = "".join(synthetic_token(i) for i in range(self.n))
        if self.kind == "chat":
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "length",
            }
        else:
            choice = {"index": 0, "text": text, "finish_reason": "length"}
        self.t_first = self.t0 + self.conn.up.ttft_s
        body = {
            "id": "fake-1",
            "object": "chat.completion" if self.kind == "chat" else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": self.usage(),
            "sim_timing": self.timing(),
        }
        return json.dumps(body).encode()


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, up: Upstream) -> None:
        self.up = up
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.url = b""
        self.body: list[bytes] = []
        self.answer: _Answer | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            print(f"fake upstream: bad request: {e!r}", file=sys.stderr)
            self.respond(400, b'{"error":{"message":"bad HTTP","type":"invalid_request_error"}}')
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        a = self.answer
        if a is not None:
            if a.handle is not None:
                a.handle.cancel()
            self.up.cancelled += 1
            self.end_answer()

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        path = self.url.split(b"?", 1)[0]
        if method == b"GET":
            if path == b"/health":
                self.respond(200, b"{}")
            elif path == b"/v1/models":
                self.respond(200, json.dumps({"object": "list", "data": [{"id": self.up.model}]}).encode())
            elif path == b"/metrics":
                m = (
                    f"vllm:num_requests_running {self.up.running}\n"
                    f"fake_requests_total {self.up.total}\nfake_cancelled_total {self.up.cancelled}\n"
                )
                self.respond(200, m.encode(), b"text/plain")
            else:
                self.respond(404, b'{"error":{"message":"not found","type":"not_found_error"}}')
            return
        if method == b"POST" and path in (b"/v1/chat/completions", b"/v1/completions"):
            self.start_answer(b"chat" in path)
            return
        self.respond(405, b'{"error":{"message":"method not allowed","type":"invalid_request_error"}}')

    # responses
    def respond(self, status: int, body: bytes, ctype: bytes = b"application/json") -> None:
        if self.transport is None or self.closed:
            return
        self.transport.write(
            b"HTTP/1.1 %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s"
            % (_STATUS[status], ctype, len(body), body)
        )

    def write_chunk(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(b"%x\r\n%s\r\n" % (len(data), data))

    def finish_stream(self) -> None:
        assert self.transport is not None
        self.transport.write(b"0\r\n\r\n")
        self.end_answer()

    def end_answer(self) -> None:
        if self.answer is not None:
            self.answer = None
            self.up.running -= 1

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def start_answer(self, chat: bool) -> None:
        try:
            req = json.loads(b"".join(self.body))
            assert isinstance(req, dict)
        except (ValueError, AssertionError):
            self.respond(
                400, b'{"error":{"message":"body is not a JSON object","type":"invalid_request_error"}}'
            )
            return
        n = req.get("max_tokens") or req.get("max_completion_tokens") or self.up.chunks
        n = max(1, int(n))
        if chat:
            msgs = req.get("messages") or []
            text = " ".join(str(m.get("content", "")) for m in msgs if isinstance(m, dict))
        else:
            text = str(req.get("prompt", ""))
        include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
        model = req.get("model") if isinstance(req.get("model"), str) else self.up.model
        a = _Answer(self, n, "chat" if chat else "text", include_usage, count_tokens(text), model)
        self.up.running += 1
        self.up.total += 1
        self.answer = a
        loop = self.loop
        if req.get("stream"):
            assert self.transport is not None
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            )
            a.handle = loop.call_at(loop.time() + self.up.ttft_s, a.step)
        else:
            due = self.up.ttft_s + (n - 1) * self.up.itl_s
            a.handle = loop.call_at(loop.time() + due, self._finish_whole, a)

    def _finish_whole(self, a: _Answer) -> None:
        if not self.closed:
            self.respond(200, a.whole())
        self.end_answer()


async def serve(ports: list[int], up: Upstream, host: str = "127.0.0.1") -> None:
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(lambda: _Conn(up), host, p, backlog=4096) for p in ports]
    try:
        await asyncio.Event().wait()
    finally:
        for s in servers:
            s.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--port", type=int, action="append", required=True, help="repeat to listen on several ports"
    )
    ap.add_argument("--ttft-ms", type=float, default=50.0)
    ap.add_argument("--itl-ms", type=float, default=20.0)
    ap.add_argument("--chunks", type=int, default=33)
    ap.add_argument("--model", default="fake-model")
    args = ap.parse_args(argv)
    import uvloop  # ships with uvicorn[standard]

    up = Upstream(args.ttft_ms / 1e3, args.itl_ms / 1e3, args.chunks, args.model)
    uvloop.run(serve(args.port, up))


if __name__ == "__main__":
    main()
