"""The one fake OpenAI-compatible upstream (raw asyncio + httptools) for benchmarks and tests.

Every answer is `max_tokens` (default `--chunks`) tokens: the first due `ttft_ms` after the request arrived,
then one every `itl_ms`, on an absolute schedule (loop.call_at, no task per stream: one process serves
1,000 streams on a fraction of a core, and TTFT carries no tick quantisation). Answers carry `sim_timing`
like the simulator's (due times); a client disconnect stops an answer at once. Faults on demand:
`--fail-every N` (every N-th completion gets 503), `--abort-after-tokens K` (connection reset mid-stream),
`--drop-after-request` (the request is read, then the connection closes without a byte: an expert lost
after it received the request), `--no-done-no-usage` (like `transformers serve`). `--role-chunk` sends a
role-only chat chunk with the headers, `--router-headers` adds the gateway's `x-router-*` headers.

Run as `python -m system.bench.fake_upstream serve MODEL --port P [any vLLM flags]` it stands in for the
`vllm` / `transformers` executables in launcher tests (FAKE_VLLM_RECORD=path writes argv and CUDA_*
variables there; FAKE_VLLM_MODE=exit|unhealthy; FAKE_VLLM_START_DELAY_S=s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httptools

from system.tokens import count_tokens, synthetic_token

_STATUS = {
    200: b"200 OK",
    400: b"400 Bad Request",
    404: b"404 Not Found",
    405: b"405 Method Not Allowed",
    503: b"503 Service Unavailable",
}
_ROUTER_HEADERS = b"x-router-policy: fake\r\nx-router-overhead-ms: 0.25\r\n"


def _error(status: int, message: str, type_: str = "invalid_request_error") -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "param": None, "code": status}}).encode()


class Upstream:
    """Behaviour and counters of one fake server (several ports may share it)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ttft_s, self.itl_s = args.ttft_ms / 1e3, args.itl_ms / 1e3
        self.model = args.model
        self.healthy = True
        self.running = self.total = self.cancelled = self.generated = self.prompt_tokens = 0

    def metrics(self) -> bytes:
        m = f'{{model_name="{self.model}"}}'
        return (
            f"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{m} {self.running}\n"
            f"# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{m} 0\n"
            f"# TYPE vllm:generation_tokens counter\nvllm:generation_tokens_total{m} {self.generated}\n"
            f"# TYPE vllm:prompt_tokens counter\nvllm:prompt_tokens_total{m} {self.prompt_tokens}\n"
            f"fake_requests_total {self.total}\nfake_cancelled_total {self.cancelled}\n"
        ).encode()


class _Answer:
    """One answer driven by loop.call_at callbacks."""

    __slots__ = (
        "chat",
        "conn",
        "created",
        "due0",
        "handle",
        "i",
        "include_usage",
        "model",
        "n",
        "prompt_tokens",
        "rid",
        "t0",
    )

    def __init__(
        self, conn: _Conn, n: int, chat: bool, include_usage: bool, prompt_tokens: int, model: str
    ) -> None:
        self.conn, self.n, self.chat, self.include_usage = conn, n, chat, include_usage
        self.prompt_tokens = prompt_tokens
        self.model = model  # echoed like a server that serves any name, so tests can see rewrites
        self.i = 0
        self.t0 = time.time()
        self.created = int(self.t0)
        up = conn.up
        self.rid = "fake-1"  # the same for every answer: two relays of one answer compare byte for byte
        self.due0 = conn.loop.time() + up.ttft_s  # loop time the first token is due
        self.handle: asyncio.TimerHandle | None = None

    def _chunk(self, choice: dict[str, Any], **extra: Any) -> bytes:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        ev = {
            "id": self.rid,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }
        ev.update(extra)
        return b"data: " + json.dumps(ev, separators=(",", ":")).encode() + b"\n\n"

    def role_chunk(self) -> bytes:
        return self._chunk({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None})

    def event(self, tok: str, last: bool) -> bytes:
        up = self.conn.up
        if self.chat:
            d = (
                {"role": "assistant", "content": tok}
                if self.i == 0 and not up.args.role_chunk
                else {"content": tok}
            )
            choice: dict[str, Any] = {"index": 0, "delta": d}
        else:
            choice = {"index": 0, "text": tok}
        choice["finish_reason"] = "length" if last else None
        if last and not self.include_usage:
            return self._chunk(choice, sim_timing=self.timing())
        return self._chunk(choice)

    def step(self) -> None:
        conn = self.conn
        if conn.closed:
            return
        up = conn.up
        due = self.due0 + self.i * up.itl_s
        if conn.loop.time() < due:  # uvloop's millisecond timers can fire early: never send a token early
            self.handle = conn.loop.call_at(due, self.step)
            return
        if up.args.abort_after_tokens and self.i >= up.args.abort_after_tokens:
            conn.abort()  # an engine crash: connection reset mid-stream
            return
        last = self.i == self.n - 1
        out = self.event(synthetic_token(self.i), last)
        self.i += 1
        up.generated += 1
        if last:
            conn.write_chunk(out + self.tail())
            conn.finish_stream()
            return
        conn.write_chunk(out)
        self.handle = conn.loop.call_at(self.due0 + self.i * up.itl_s, self.step)

    def timing(self) -> dict[str, Any]:
        up = self.conn.up
        first = self.t0 + up.ttft_s
        return {
            "arrival_ts": self.t0,
            "first_scheduled_ts": self.t0,
            "first_token_ts": first,
            "last_token_ts": first + (self.n - 1) * up.itl_s,
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

    def tail(self) -> bytes:
        if self.conn.up.args.no_done_no_usage:
            return b""
        out = b""
        if self.include_usage:
            usage = {"id": self.rid, "object": "chunk", "model": self.model, "choices": []}
            usage.update(usage=self.usage(), sim_timing=self.timing())
            out = b"data: " + json.dumps(usage).encode() + b"\n\n"
        return out + b"data: [DONE]\n\n"

    def whole(self) -> bytes:
        text = "".join(synthetic_token(i) for i in range(self.n))
        if self.chat:
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}}
        else:
            choice = {"index": 0, "text": text}
        choice["finish_reason"] = "length"
        body = {
            "id": self.rid,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": self.usage(),
            "sim_timing": self.timing(),
        }
        return json.dumps(body).encode()


def _validate(req: Any, up: Upstream, chat: bool) -> tuple[int, str] | str:
    """(max_tokens, prompt text), or an error message (400) for what vLLM would refuse."""
    if not isinstance(req, dict):
        return "body is not a JSON object"
    n = req.get("max_tokens")
    if n is None and chat:
        n = req.get("max_completion_tokens")
    if n is None:
        n = up.args.chunks
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        return "max_tokens must be a positive integer"
    if n > up.args.max_model_len:
        return f"max_tokens {n} is more than the maximum context length {up.args.max_model_len}"
    if chat:
        msgs = req.get("messages")
        if not isinstance(msgs, list) or not msgs:
            return "messages must be a non-empty list"
        text = " ".join(str(m.get("content", "")) for m in msgs if isinstance(m, dict))
    else:
        if "prompt" not in req:
            return "prompt is required"
        text = str(req["prompt"])
    return n, text


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
            self.respond(400, _error(400, "bad HTTP request"))
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
        up = self.up
        if method == b"GET":
            if path == b"/health":
                if up.healthy:
                    self.respond(200, b"{}")
                else:
                    self.respond(503, _error(503, "unhealthy", "service_unavailable"))
            elif path == b"/v1/models":
                card = {"id": up.model, "object": "model", "owned_by": "fake"}
                self.respond(200, json.dumps({"object": "list", "data": [card]}).encode())
            elif path == b"/metrics":
                self.respond(200, up.metrics(), b"text/plain; version=0.0.4")
            else:
                self.respond(404, _error(404, "not found", "not_found_error"))
            return
        if method == b"POST" and path in (b"/v1/chat/completions", b"/v1/completions"):
            self.start_answer(b"chat" in path)
            return
        self.respond(405, _error(405, "method not allowed"))

    # responses
    def respond(
        self, status: int, body: bytes, ctype: bytes = b"application/json", extra: bytes = b""
    ) -> None:
        if self.transport is None or self.closed:
            return
        self.transport.write(
            b"HTTP/1.1 %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s\r\n%s"
            % (_STATUS[status], ctype, len(body), extra, body)
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

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def start_answer(self, chat: bool) -> None:
        up, args = self.up, self.up.args
        up.total += 1
        if args.drop_after_request:
            self.close()  # the whole request arrived; not one byte of an answer
            return
        if args.fail_every and up.total % args.fail_every == 0:
            self.respond(503, _error(503, "fake overload: try again later", "ServiceUnavailableError"))
            return
        try:
            req = json.loads(b"".join(self.body))
        except (ValueError, RecursionError):
            self.respond(400, _error(400, "body is not valid JSON"))
            return
        checked = _validate(req, up, chat)
        if isinstance(checked, str):
            self.respond(400, _error(400, checked))
            return
        n, text = checked
        opts = req.get("stream_options")
        include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
        include_usage = include_usage and not args.no_done_no_usage  # transformers serve ignores it
        model = req.get("model") if isinstance(req.get("model"), str) else up.model
        a = _Answer(self, n, chat, include_usage, count_tokens(text), model)
        up.running += 1
        up.prompt_tokens += a.prompt_tokens
        self.answer = a
        router = _ROUTER_HEADERS + b"x-router-expert: expert-%d\r\nx-router-cluster: %d\r\n" % (
            up.total % 2,
            up.total % 2,
        )
        extra = router if args.router_headers else b""
        if req.get("stream") is True:
            assert self.transport is not None
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
                b"transfer-encoding: chunked\r\n%s\r\n" % extra
            )
            if chat and args.role_chunk:
                self.write_chunk(a.role_chunk())
            a.handle = self.loop.call_at(a.due0, a.step)
        else:
            a.handle = self.loop.call_at(a.due0 + (n - 1) * up.itl_s, self._finish_whole, a, extra)

    def _finish_whole(self, a: _Answer, extra: bytes) -> None:
        due = a.due0 + (a.n - 1) * self.up.itl_s
        if self.loop.time() < due:  # never early (uvloop's timers have millisecond resolution)
            a.handle = self.loop.call_at(due, self._finish_whole, a, extra)
            return
        if not self.closed:
            self.up.generated += a.n
            self.respond(200, a.whole(), extra=extra)
        self.end_answer()


async def serve(ports: list[int], up: Upstream, host: str = "127.0.0.1") -> None:
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(lambda: _Conn(up), host, p, backlog=4096) for p in ports]
    try:
        await asyncio.Event().wait()
    finally:
        for s in servers:
            s.close()


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument(
        "--port", type=int, action="append", required=True, help="repeat to listen on several ports"
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--ttft-ms", type=float, default=50.0)
    ap.add_argument("--itl-ms", type=float, default=20.0)
    ap.add_argument("--chunks", type=int, default=33, help="tokens per answer when max_tokens is not given")
    ap.add_argument("--max-model-len", type=int, default=4096, help="max_tokens above this: 400")
    ap.add_argument("--model", default="fake-model")
    ap.add_argument(
        "--role-chunk", action="store_true", help="chat streams: role-only chunk with the headers"
    )
    ap.add_argument("--router-headers", action="store_true")
    ap.add_argument("--fail-every", type=int, default=0)
    ap.add_argument("--abort-after-tokens", type=int, default=0)
    ap.add_argument("--drop-after-request", action="store_true")
    ap.add_argument("--no-done-no-usage", action="store_true")
    ap.add_argument(
        "--accept",
        choices=["batch", "single"],
        default="batch",
        help="single: stock uvloop, one connection accepted per loop iteration (system/acceptloop.py)",
    )
    return ap


def _flag(argv: list[str], name: str, default: str) -> str:
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return default


def _engine_args(argv: list[str]) -> tuple[argparse.Namespace, bool] | int:
    """`serve MODEL --port P ...` (any engine flags): the vLLM / transformers stand-in."""
    record = os.environ.get("FAKE_VLLM_RECORD")
    if record:
        env = {k: v for k, v in os.environ.items() if k.startswith("CUDA_")}
        Path(record).write_text(json.dumps({"argv": argv, "env": env}))
    mode = os.environ.get("FAKE_VLLM_MODE", "ok")
    if mode == "exit":
        print("fake vllm: RuntimeError: CUDA out of memory (simulated start-up failure)", flush=True)
        return 3
    time.sleep(float(os.environ.get("FAKE_VLLM_START_DELAY_S", "0")))
    rest = argv[argv.index("serve") + 1 :]
    model = _flag(argv, "--served-model-name", "") or _flag(argv, "--force-model", "")
    if not model:
        model = rest[0] if rest and not rest[0].startswith("-") else "fake-model"
    where = ["--port", _flag(argv, "--port", "8000"), "--host", _flag(argv, "--host", "127.0.0.1")]
    args = parser().parse_args(
        [*where, "--model", model, "--ttft-ms", "1", "--itl-ms", "1", "--chunks", "16", "--role-chunk"]
    )
    print(f"fake vllm serving {model} on {args.host}:{args.port[0]}", flush=True)
    return args, mode != "unhealthy"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    healthy = True
    if "serve" in argv:
        got = _engine_args(argv)
        if isinstance(got, int):
            return got
        args, healthy = got
    else:
        args = parser().parse_args(argv)
    from system import acceptloop
    from system.edge import raise_nofile_limit

    raise_nofile_limit()  # 1,000 streams need 1,000 sockets
    up = Upstream(args)
    up.healthy = healthy
    if args.accept == "single":
        import uvloop

        uvloop.run(serve(args.port, up, args.host))
    else:
        acceptloop.run(serve(args.port, up, args.host))  # uvloop, accepting connection bursts in batches
    return 0


if __name__ == "__main__":
    sys.exit(main())
