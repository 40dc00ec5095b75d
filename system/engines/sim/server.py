"""Raw ASGI app for the sim (no framework on the hot streaming path): OpenAI routes, /health, /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from system.engines.sim.api import ApiError, ParsedRequest, Responder, check_content_type, parse_request
from system.engines.sim.engine import SimEngine
from system.engines.sim.scheduler import SimRequest, State
from system.engines.sim.textgen import TokenText, natural_output_len, resolve_output_len

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

log = logging.getLogger("sim.server")
MAX_BODY_BYTES = 16 * 1024 * 1024
JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]


class SimApp:
    """ASGI application around one SimEngine."""

    def __init__(self, engine: SimEngine, *, seed: int = 0) -> None:
        self.engine = engine
        self.profile = engine.profile
        self.model_name = engine.model_name
        self.model_json = json.dumps(engine.model_name)
        self.seed = seed
        self.tokens = TokenText(self.profile.max_model_len)
        self.routes: dict[tuple[str, str], Callable[[Scope, Receive, Send], Awaitable[None]]] = {
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/completions"): self._completions,
            ("GET", "/v1/models"): self._models,
            ("GET", "/health"): self._health,
            ("GET", "/metrics"): self._metrics,
            ("GET", "/sim/gpu"): self._sim_gpu,
            ("GET", "/version"): self._version,
        }
        self._paths = {p for _, p in self.routes}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            handler = self.routes.get((scope["method"], scope["path"].rstrip("/") or "/"))
            if handler is None:
                if scope["path"].rstrip("/") in self._paths:
                    err = ApiError(405, f"method {scope['method']} not allowed on {scope['path']}")
                else:
                    err = ApiError(404, f"no route {scope['path']}")
                await _respond(send, err.status, err.body())
                return
            await handler(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                self.engine.start()
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.engine.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ---- simple routes -----------------------------------------------------------------------------------
    async def _health(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.engine.alive:
            await _respond(send, 200, b"", [])
        else:
            await _respond(send, 503, ApiError(503, "engine step loop is not running").body())

    async def _version(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _respond(send, 200, json.dumps({"version": "sim", "profile": self.profile.name}).encode())

    async def _models(self, scope: Scope, receive: Receive, send: Send) -> None:
        card = {
            "id": self.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "expert-router-sim",
            "root": self.model_name,
            "parent": None,
            "max_model_len": self.profile.max_model_len,
            "sim_profile": self.profile.name,
        }
        await _respond(send, 200, json.dumps({"object": "list", "data": [card]}).encode())

    async def _sim_gpu(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The simulated GPU's counters (shared by co-located engines): telemetry's sim source."""
        await _respond(send, 200, json.dumps(self.engine.gpu.snapshot()).encode())

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = self.engine.metrics.render()
        headers = [(b"content-type", self.engine.metrics.content_type.encode())]
        await _respond(send, 200, body, headers)

    # ---- generation --------------------------------------------------------------------------------------
    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._generate("chat", scope, receive, send)

    async def _completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._generate("completion", scope, receive, send)

    async def _generate(self, kind: str, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            check_content_type(scope["headers"])
        except ApiError as e:
            await _respond(send, e.status, e.body())
            return
        raw = await _read_body(receive, send)
        if raw is None:
            return
        try:
            pr = parse_request(kind, raw, self.model_name, self.profile.max_model_len)
        except ApiError as e:
            await _respond(send, e.status, e.body())
            return
        p = self.profile
        natural = natural_output_len(pr.seed_key, self.seed, p.output_len_median, p.output_len_sigma)
        n_out, reason = resolve_output_len(natural, pr.max_tokens, pr.min_tokens, pr.ignore_eos)
        arrival = self.engine.clock()  # the truth starts here: the front-end time below is the engine's
        if p.request_latency_s > 0:  # the front-end's per-request time outside the step loop (costmodel)
            await asyncio.sleep(p.request_latency_s)
        try:
            req = self.engine.submit(pr.prompt_tokens, n_out, reason, stream=pr.stream, arrival_ts=arrival)
        except ValueError as e:  # cannot fit the KV cache even alone (validation should prevent it)
            await _respond(send, 400, ApiError(400, str(e)).body())
            return
        watcher = asyncio.get_running_loop().create_task(self._watch_disconnect(receive, req))
        try:
            if pr.stream:
                await self._stream(pr, req, send)
            else:
                await self._complete(pr, req, send)
        finally:
            watcher.cancel()
            if not req.done:  # cancelled or failed mid-way: never leak KV blocks
                self.engine.abort(req)

    async def _watch_disconnect(self, receive: Receive, req: SimRequest) -> None:
        while not req.done:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                if not req.done:
                    self.engine.abort(req)
                return

    async def _stream(self, pr: ParsedRequest, req: SimRequest, send: Send) -> None:
        rsp = Responder(pr.kind, self.model_json, self.model_name)
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        span = self.tokens.span
        sent = 0
        prefix = rsp.role_chunk
        wait = self.engine.wait
        while True:
            upto = req.notified
            if upto > sent:
                text = span(sent, upto)
                sent = upto
                if req.state == State.FINISHED and upto >= req.num_output:
                    body = prefix + rsp.final_events(text, req, pr.include_usage)
                    await send({"type": "http.response.body", "body": body, "more_body": False})
                    return
                body = prefix + rsp.chunk(text) if prefix else rsp.chunk(text)
                prefix = b""
                await send({"type": "http.response.body", "body": body, "more_body": True})
                continue
            if req.done:  # aborted: the client is gone, nothing more to send
                return
            await wait(req)

    async def _complete(self, pr: ParsedRequest, req: SimRequest, send: Send) -> None:
        while not req.done:
            await self.engine.wait(req)
        if req.state != State.FINISHED:
            return  # aborted: client disconnected
        rsp = Responder(pr.kind, self.model_json, self.model_name)
        await _respond(send, 200, rsp.full_body(self.tokens.span(0, req.num_output), req))


async def _read_body(receive: Receive, send: Send) -> bytes | None:
    """The whole request body, or None (client gone, or 413 already answered)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return None
        part = msg.get("body", b"")
        size += len(part)
        if size > MAX_BODY_BYTES:
            err = ApiError(413, f"request body larger than {MAX_BODY_BYTES} bytes")
            await _respond(send, 413, err.body())
            return None
        chunks.append(part)
        if not msg.get("more_body", False):
            return b"".join(chunks)


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    hdrs = [*(JSON_HEADERS if headers is None else headers), (b"content-length", str(len(body)).encode())]
    with contextlib.suppress(OSError):
        await send({"type": "http.response.start", "status": status, "headers": hdrs})
        await send({"type": "http.response.body", "body": body, "more_body": False})
