"""The hot path: parse the request once, route it, relay the upstream bytes unchanged to the client."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from system.gateway.errors import error_body, error_response, sse_error_event
from system.gateway.pool import ExpertState
from system.gateway.state import Gateway

# Failures where the upstream cannot have started work on the request: retrying elsewhere is invisible.
CONNECT_ERRORS = (
    aiohttp.ClientConnectorError,
    aiohttp.ConnectionTimeoutError,
    aiohttp.ServerDisconnectedError,
)
FORWARD_HEADERS = ("authorization", "x-request-id", "traceparent")
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


class RelayResponse(Response):
    """Sends the request upstream and relays the answer through raw ASGI messages.

    Streams are relayed as the upstream's bytes arrive (`readany`: whatever is buffered, no per-event
    parsing, no re-framing); a watcher task turns a client disconnect into cancellation of the upstream
    request at once, whether the response is streaming or not.
    """

    def __init__(
        self,
        gw: Gateway,
        *,
        expert: ExpertState,
        cluster: int,
        policy: str,
        body: dict[str, Any],
        raw: bytes,
        path: str,
        headers: dict[str, str],
        text: str,
        t0: float,
    ) -> None:
        # Response.__init__ is skipped on purpose: this class writes its own messages.
        self.gw, self.expert, self.cluster, self.policy_kind = gw, expert, cluster, policy
        self.body_obj, self.raw, self.path, self.fwd_headers, self.text, self.t0 = (
            body,
            raw,
            path,
            headers,
            text,
            t0,
        )
        self.background = None
        self.done = False
        self.disconnected = False
        self.status = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gw = self.gw
        task = asyncio.current_task()
        assert task is not None
        watcher = asyncio.create_task(self._watch(receive, task))
        try:
            await self._run(send)
        except asyncio.CancelledError:
            if not self.disconnected:
                raise
            task.uncancel()  # our own cancellation: the client is gone, nothing left to send
            self.status = 499
        finally:
            self.done = True
            watcher.cancel()
            gw.in_flight -= 1
            gw.metrics.requests.labels(self.expert.name, self.policy_kind, str(self.status)).inc()

    async def _watch(self, receive: Receive, task: asyncio.Task[Any]) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                if not self.done:
                    self.disconnected = True
                    task.cancel()
                return

    def _payload(self, expert: ExpertState) -> bytes:
        # re-serialise only when the upstream would not know the name the client used ("auto", "e0")
        if expert.model is None or self.body_obj["model"] == expert.model:
            return self.raw
        self.body_obj["model"] = expert.model
        return json.dumps(self.body_obj, ensure_ascii=False, separators=(",", ":")).encode()

    async def _error(self, send: Send, status: int, message: str) -> None:
        self.status = status
        self.done = True
        body = error_body(status, message)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *self._router_headers(self.expert, 0.0),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    def _router_headers(self, expert: ExpertState, overhead_s: float) -> list[tuple[bytes, bytes]]:
        return [
            (b"x-router-expert", expert.name.encode()),
            (b"x-router-cluster", str(self.cluster).encode()),
            (b"x-router-policy", self.policy_kind.encode()),
            (b"x-router-overhead-ms", f"{overhead_s * 1e3:.3f}".encode()),
        ]

    async def _run(self, send: Send) -> None:
        gw = self.gw
        session = gw.session
        assert session is not None
        metrics = gw.metrics
        expert = self.expert
        tried: set[str] = set()
        while True:
            tried.add(expert.name)
            if not expert.breaker.acquire():  # half-open and its one trial is already out
                alt = self._fallback(tried)
                if alt is None:
                    await self._error(send, 503, f"expert {expert.name} is unavailable (circuit open)")
                    return
                expert = self.expert = alt
                continue
            expert.outstanding += 1
            t_dispatch = time.perf_counter()
            try:
                resp = await session.post(
                    expert.urls[self.path], data=self._payload(expert), headers=self.fwd_headers
                )
            except CONNECT_ERRORS as e:
                expert.outstanding -= 1
                expert.breaker.record_failure()
                metrics.upstream_errors.labels(expert.name, "connect").inc()
                retry = gw.limits.retry_connect_errors and len(tried) == 1 and self.policy_kind != "direct"
                alt = self._fallback(tried) if retry else None
                if alt is None:
                    await self._error(send, 503, f"expert {expert.name} is unreachable: {e}")
                    return
                metrics.retries.inc()
                expert = self.expert = alt
                continue
            except TimeoutError:
                expert.outstanding -= 1
                expert.breaker.record_failure()
                metrics.upstream_errors.labels(expert.name, "timeout").inc()
                await self._error(send, 504, f"expert {expert.name} did not answer within the timeout")
                return
            except aiohttp.ClientError as e:
                expert.outstanding -= 1
                expert.breaker.record_failure()
                metrics.upstream_errors.labels(expert.name, "request").inc()
                await self._error(send, 502, f"expert {expert.name} failed: {e!r}")
                return
            except BaseException:
                expert.outstanding -= 1
                expert.breaker.release()
                raise
            break
        try:
            await self._relay(send, expert, resp, t_dispatch)
        finally:
            expert.outstanding -= 1
            if self.done:
                resp.release()  # body fully read: the connection goes back to the pool
            else:
                resp.close()  # cancelled or broken: drop the connection so the upstream stops work

    def _fallback(self, tried: set[str]) -> ExpertState | None:
        policy = self.gw.policy
        assert policy is not None
        return policy.fallback(self.gw.classifier, self.text, tried)

    async def _relay(
        self, send: Send, expert: ExpertState, resp: aiohttp.ClientResponse, t_dispatch: float
    ) -> None:
        t_headers = time.perf_counter()
        status = resp.status
        if status >= 500:
            expert.breaker.record_failure()
            self.gw.metrics.upstream_errors.labels(expert.name, f"http_{status}").inc()
        else:
            expert.breaker.record_success()
        ctype = resp.headers.get("Content-Type", "application/json")
        headers = [(b"content-type", ctype.encode())]
        encoding = resp.headers.get("Content-Encoding")
        if encoding:
            headers.append((b"content-encoding", encoding.encode()))
        self.status = status
        if not ctype.startswith("text/event-stream"):
            try:
                data = await resp.read()
            except TimeoutError:
                self.gw.metrics.upstream_errors.labels(expert.name, "timeout").inc()
                await self._error(send, 504, f"expert {expert.name} stopped answering (read timeout)")
                return
            except aiohttp.ClientError as e:
                expert.breaker.record_failure()
                self.gw.metrics.upstream_errors.labels(expert.name, "broken").inc()
                await self._error(send, 502, f"expert {expert.name} broke off its answer: {e!r}")
                return
            overhead = (t_dispatch - self.t0) + (time.perf_counter() - t_headers)
            headers.append((b"content-length", str(len(data)).encode()))
            headers += self._router_headers(expert, overhead)
            self.gw.metrics.overhead.observe(overhead)
            self.done = True
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": data, "more_body": False})
            return
        overhead = (t_dispatch - self.t0) + (time.perf_counter() - t_headers)
        headers += self._router_headers(expert, overhead)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        self.gw.metrics.overhead.observe(overhead)
        readany = resp.content.readany
        try:
            while True:
                chunk = await readany()
                if not chunk:
                    break
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (aiohttp.ClientError, TimeoutError) as e:
            # headers are out: tell the client in-band, then end the connection without the final
            # chunk so that no client can mistake the cut stream for a complete answer
            timeout = isinstance(e, TimeoutError)
            if not timeout:
                expert.breaker.record_failure()
            self.gw.metrics.upstream_errors.labels(expert.name, "timeout" if timeout else "broken").inc()
            self.status = 504 if timeout else 502
            what = "stopped answering (read timeout)" if timeout else f"broke off the stream: {e!r}"
            event = sse_error_event(self.status, f"expert {expert.name} {what}")
            await send({"type": "http.response.body", "body": event, "more_body": True})
            return
        self.done = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def handle_completion(gw: Gateway, request: Request, path: str) -> Response:
    """Endpoint body shared by /v1/chat/completions and /v1/completions."""
    t0 = time.perf_counter()
    lim = gw.limits
    if gw.in_flight >= lim.max_in_flight:
        gw.metrics.rejected.labels("overloaded").inc()
        return error_response(
            429,
            f"gateway is at its limit of {lim.max_in_flight} requests in flight; retry later",
            headers={"Retry-After": str(lim.retry_after_s)},
        )
    try:
        raw = await read_body(request, lim.max_body_bytes)
        body = parse_body(raw)
        model = body["model"]
        policy = gw.policy
        assert policy is not None
        text = ""
        if model == "auto":
            if policy.needs_classifier:
                text = prompt_text(body, path, lim.classify_max_chars)
            td = time.perf_counter()
            expert, cluster = policy.choose(gw.classifier, text)
            gw.metrics.decision.observe(time.perf_counter() - td)
            kind = policy.kind
            if expert is None:
                gw.metrics.rejected.labels("no_expert").inc()
                return error_response(503, "no expert is available (all unhealthy or circuit open)")
        else:
            expert = gw.pool.lookup(model)
            cluster, kind = -1, "direct"
            if expert is None:
                names = ", ".join(["auto", *gw.pool.by_name])
                return error_response(404, f"model {model!r} not found; use one of: {names}", param="model")
            if not expert.available():
                gw.metrics.rejected.labels("no_expert").inc()
                return error_response(503, f"expert {model} is unavailable (unhealthy or circuit open)")
    except BadRequest as e:
        gw.metrics.rejected.labels("too_large" if e.status == 413 else "bad_request").inc()
        return error_response(e.status, e.message, param=e.param)
    hdrs = request.headers
    fwd = {"content-type": "application/json"}
    for h in FORWARD_HEADERS:
        v = hdrs.get(h)
        if v is not None:
            fwd[h] = v
    gw.in_flight += 1  # released by RelayResponse.__call__
    return RelayResponse(
        gw,
        expert=expert,
        cluster=cluster,
        policy=kind,
        body=body,
        raw=raw,
        path=path,
        headers=fwd,
        text=text,
        t0=t0,
    )
