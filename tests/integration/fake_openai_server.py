"""A tiny OpenAI-compatible SSE server with known timing, for load-generator tests (run as a subprocess).

It sends the response headers and a non-content first chunk immediately, then the first token exactly
`--ttft-ms` after the request arrived and one token every `--itl-ms`; the last JSON event carries
`sim_timing` like the simulator does, so tests can check the recorded TTFT against a known delay.
`--router-headers` adds the gateway's `x-router-*` headers; `--fail-every N` answers every N-th request
with an OpenAI error body (HTTP 503); `--abort-after-tokens K` closes the connection mid-stream.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from pathlib import Path

from aiohttp import web

from system.processes import ServerProcess, free_port
from system.tokens import count_tokens, synthetic_token

_counter = itertools.count(1)


def _error(status: int, message: str, type_: str = "invalid_request_error") -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": None, "code": status}}
    return web.json_response(body, status=status)


def _prompt_text(body: dict, chat: bool) -> str:
    if chat:
        return " ".join(str(m.get("content", "")) for m in body.get("messages", []))
    return str(body.get("prompt", ""))


async def _completion(request: web.Request) -> web.StreamResponse:
    arrival = time.time()
    args: argparse.Namespace = request.app["args"]
    chat = request.path.endswith("/chat/completions")
    try:
        body = await request.json()
    except json.JSONDecodeError:
        return _error(400, "body is not valid JSON")
    if not isinstance(body, dict):
        return _error(400, "body must be a JSON object")
    model = body.get("model")
    if model not in (args.model, "auto"):
        return _error(404, f"The model `{model}` does not exist.", "NotFoundError")
    n = next(_counter)
    if args.fail_every and n % args.fail_every == 0:
        return _error(503, "fake overload: try again later", "ServiceUnavailableError")
    max_tokens = int(body.get("max_tokens") or 16)
    prompt_tokens = count_tokens(_prompt_text(body, chat))
    rid = f"fake-{n}"
    headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    if args.router_headers:
        headers.update(
            {
                "x-router-expert": f"expert-{n % 2}",
                "x-router-cluster": str(n % 2),
                "x-router-policy": "fake",
                "x-router-overhead-ms": "0.25",
            }
        )
    first_due = arrival + args.ttft_ms / 1000.0
    last_due = first_due + (max_tokens - 1) * args.itl_ms / 1000.0
    timing = {
        "arrival_ts": arrival,
        "first_scheduled_ts": arrival,
        "first_token_ts": first_due,
        "last_token_ts": last_due,
        "prompt_tokens": prompt_tokens,
        "output_tokens": max_tokens,
        "preemptions": 0,
    }
    if not body.get("stream"):
        text = "".join(synthetic_token(i) for i in range(max_tokens))
        await asyncio.sleep(max(0.0, last_due - time.time()))
        choice = {"index": 0, "message": {"role": "assistant", "content": text}} if chat else {"text": text}
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": max_tokens}
        return web.json_response(
            {"id": rid, "choices": [choice], "usage": usage, "sim_timing": timing}, headers=headers
        )

    resp = web.StreamResponse(status=200, headers=headers)
    await resp.prepare(request)  # headers go out now, long before the first token

    async def send(obj: dict | str) -> None:
        data = obj if isinstance(obj, str) else json.dumps(obj)
        await resp.write(f"data: {data}\n\n".encode())

    obj = "chat.completion.chunk" if chat else "text_completion"
    if chat:  # like vLLM: a role-only chunk with empty content arrives first
        await send({"id": rid, "object": obj, "choices": [{"index": 0, "delta": {"role": "assistant"}}]})
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    include_usage = include_usage and not args.no_done_no_usage
    for i in range(max_tokens):
        await asyncio.sleep(max(0.0, first_due + i * args.itl_ms / 1000.0 - time.time()))
        if args.abort_after_tokens and i >= args.abort_after_tokens:
            assert request.transport is not None
            request.transport.abort()  # an engine crash: connection reset mid-stream
            return resp
        tok = synthetic_token(i)
        last = i == max_tokens - 1
        finish = "length" if last else None
        choice = {"index": 0, "delta": {"content": tok}} if chat else {"index": 0, "text": tok}
        chunk: dict = {"id": rid, "object": obj, "choices": [{**choice, "finish_reason": finish}]}
        if last and not include_usage:
            chunk["sim_timing"] = timing
        await send(chunk)
    if include_usage:
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": max_tokens,
            "total_tokens": prompt_tokens + max_tokens,
        }
        await send({"id": rid, "object": obj, "choices": [], "usage": usage, "sim_timing": timing})
    if not args.no_done_no_usage:
        await send("[DONE]")
    await resp.write_eof()
    return resp


async def _models(request: web.Request) -> web.Response:
    model = request.app["args"].model
    return web.json_response({"object": "list", "data": [{"id": model, "object": "model"}]})


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def fake_server(log_dir: Path, *args: str) -> ServerProcess:
    """A ServerProcess (not started) running this server on a free port with `args`."""
    port = free_port()
    return ServerProcess(
        [sys.executable, __file__, "--port", str(port), *args],
        name="fake-openai",
        health_url=f"http://127.0.0.1:{port}/health",
        log_path=log_dir / f"fake-{port}.log",
    )


def host_of(srv: ServerProcess) -> str:
    """Base URL of a server started from `fake_server` (its health URL without /health)."""
    assert srv.health_url is not None
    return srv.health_url.rsplit("/", 1)[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", default="fake-model")
    p.add_argument("--ttft-ms", type=float, default=50.0)
    p.add_argument("--itl-ms", type=float, default=5.0)
    p.add_argument("--router-headers", action="store_true")
    p.add_argument("--fail-every", type=int, default=0)
    p.add_argument("--abort-after-tokens", type=int, default=0)
    # like transformers serve: ignores stream_options (no usage chunk) and ends the body without [DONE]
    p.add_argument("--no-done-no-usage", action="store_true")
    args = p.parse_args()
    app = web.Application()
    app["args"] = args
    app.router.add_post("/v1/chat/completions", _completion)
    app.router.add_post("/v1/completions", _completion)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/health", _health)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None, backlog=4096)


if __name__ == "__main__":
    main()
