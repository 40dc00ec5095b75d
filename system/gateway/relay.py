"""The hot path: parse the request once, route it, relay the upstream bytes unchanged to the client."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
from aiohttp.payload import BytesPayload
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from system.gateway.errors import error_body, error_response, sse_error_event
from system.gateway.fastlane import pipe_stream, start_chunked
from system.gateway.pool import ExpertState
from system.gateway.request import (
    BadRequest,
    ParsedBody,
    check_content_type,
    parse_body,
    prompt_text,
    read_body_asgi,
    request_head,
    rewrite_model,
)
from system.gateway.state import Gateway

log = logging.getLogger("expert_router.gateway")

# Failures where the upstream cannot have started work on the request, because no byte of it was sent:
# the TCP connect failed or timed out. Only these are retried elsewhere. Anything later (the connection
# dropped or reset after the request went out, even before the response headers) may come after the
# expert started the work, so it is a 502 and never silently run twice.
CONNECT_ERRORS = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
FORWARD_HEADERS = ("authorization", "x-request-id", "traceparent")
_FORWARD = frozenset(h.encode() for h in FORWARD_HEADERS)
# ASGI scope extension set by system.edge's protocol: end the connection at once, without the final chunk
CUT_EXTENSION = "expert_router.cut"


class RelayResponse(Response):
    """Sends the request upstream and relays the answer through raw ASGI messages.

    Streams are relayed as the upstream's bytes arrive, never parsed as events: written from the expert
    socket's callback straight to uvicorn's transport (`fastlane.pipe_stream`, the default), or else one ASGI
    message per `readany`. A client disconnect cancels the upstream request at once, streaming or not
    (`_hook_disconnect` under uvicorn's httptools cycle, a watcher task otherwise).
    """

    def __init__(
        self,
        gw: Gateway,
        *,
        expert: ExpertState,
        cluster: int,
        policy: str,
        body: ParsedBody,
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
        self.done = False  # the response is complete (or about to be): no cancellation from here on
        self.disconnected = False
        self.timed_out = False
        self.headers_sent = False
        self.status = 0
        self.last_io = 0.0  # loop time of the last upstream progress, read by Gateway's read-timeout watchdog
        self.piped: Any = None  # the upstream response while it pipes (fastlane): its `last_io` counts too
        self.task: asyncio.Task[Any] | None = None
        self.cut: Any = None  # the server's cut-connection callable, when it offers one
        self.hooked: Any = None  # the cycle's message_event while _hook_disconnect's wrapper is on it

    def expire(self) -> None:
        """Called by the watchdog: the upstream has been silent longer than read_timeout_s."""
        if not self.done and self.task is not None:
            self.timed_out = True
            self.task.cancel()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gw = self.gw
        task = asyncio.current_task(gw.loop)
        assert task is not None
        self.task = task
        self.cut = scope.get("extensions", {}).get(CUT_EXTENSION)
        watcher = None if self._hook_disconnect(send) else asyncio.create_task(self._watch(receive, task))
        gw.active.add(self)
        try:
            await self._run(send)
        except asyncio.CancelledError:
            # our own cancellations: the client left (nothing more to send), or the read-timeout watchdog
            if self.disconnected:
                task.uncancel()
                self.status = 499
            elif self.timed_out:
                task.uncancel()
                await self._on_timeout(send)
            else:
                raise
        finally:
            self.done = True
            if watcher is not None:
                watcher.cancel()
            # Break the reference cycles of this request (event -> wrapper -> self -> task -> coroutine
            # frame), so reference counting frees it at once: left to the cyclic GC, ~35 objects per request
            # made its collections a tenth of the gateway's CPU at 1,000 requests/s.
            if self.hooked is not None:
                self.hooked.__dict__.pop("set", None)
                self.hooked = None
            self.task = self.cut = None
            gw.active.discard(self)
            gw.in_flight -= 1
            gw.metrics.count_request(self.expert.name, self.policy_kind, self.status)

    def _hook_disconnect(self, send: Send) -> bool:
        """Under uvicorn's httptools cycle, learn of a client disconnect from the cycle itself instead of a
        watcher task per request: uvicorn (and system.edge's cut) set `cycle.disconnected` and then its
        `message_event`; the request body is already read, so that event fires for nothing else that
        matters here. False when `send` is not such a cycle (the caller starts the watcher task)."""
        cycle = getattr(send, "__self__", None)
        event = getattr(cycle, "message_event", None)
        if event is None or not hasattr(cycle, "disconnected"):
            return False
        original = event.set

        def set_and_check() -> None:
            original()
            if cycle.disconnected and not self.done and not self.disconnected:  # type: ignore[union-attr]
                self.disconnected = True
                if self.task is not None:
                    self.task.cancel()

        event.set = set_and_check  # type: ignore[method-assign]
        self.hooked = event
        if cycle.disconnected:  # type: ignore[union-attr]  # gone while the request was being routed
            set_and_check()
        return True

    async def _watch(self, receive: Receive, task: asyncio.Task[Any]) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                if not self.done:
                    self.disconnected = True
                    task.cancel()
                return

    async def _on_timeout(self, send: Send) -> None:
        e = self.expert
        e.breaker.record_failure()
        self.gw.metrics.upstream_errors.labels(e.name, "timeout").inc()
        msg = f"expert {e.name} sent nothing for {self.gw.limits.read_timeout_s:g} s (read timeout)"
        if not self.headers_sent:
            await self._error(send, 504, msg)
            return
        self.status = 504  # stream already started: in-band error, then cut the connection (see _relay)
        await send({"type": "http.response.body", "body": sse_error_event(504, msg), "more_body": True})
        self._stream_cut(e, "timeout", msg)

    def _stream_cut(self, expert: ExpertState, reason: str, msg: str) -> None:
        """A stream ended early after its headers went out: count it, one INFO line (the expert's failure
        is not the gateway's error), and end the client connection without the terminating chunk."""
        self.gw.metrics.streams_cut.labels(expert.name, reason).inc()
        log.info("stream cut (%s): %s", reason, msg)
        if self.cut is not None:
            self.cut()

    async def _post(self, expert: ExpertState) -> Any:
        """Send the request to `expert`; returns once its status line and headers are in."""
        data = rewrite_model(self.raw, self.body_obj, expert.model)
        url = expert.urls[self.path]
        upstream = self.gw.upstream
        if upstream is not None:  # server.upstream_client: raw (default)
            return await upstream.post(url, data, self.fwd_headers)
        session = self.gw.session
        assert session is not None
        payload = BytesPayload(data, content_type="application/json")
        return await session.post(url, data=payload, headers=self.fwd_headers)

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
            self.last_io = self.gw.loop_time()
            try:
                resp = await self._post(expert)
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
            except aiohttp.ClientError as e:
                # the request (or part of it) went out: the expert may have started the work
                expert.outstanding -= 1
                expert.breaker.record_failure()
                metrics.upstream_errors.labels(expert.name, "lost").inc()
                await self._error(
                    send, 502, f"expert {expert.name} failed after the request was sent to it: {e!r}"
                )
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

    async def _relay(self, send: Send, expert: ExpertState, resp: Any, t_dispatch: float) -> None:
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
        self.headers_sent = True
        if not start_chunked(getattr(send, "__self__", None), status, headers):
            await send({"type": "http.response.start", "status": status, "headers": headers})
        self.gw.metrics.overhead.observe(overhead)
        try:
            if not await pipe_stream(send, resp, self):
                readany = resp.content.readany
                now = self.gw.loop_time
                while True:
                    chunk = await readany()
                    if not chunk:
                        break
                    self.last_io = now()  # the whole per-chunk cost of timeout handling
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except aiohttp.ClientError as e:
            # headers are out: tell the client in-band, then end the connection without the final
            # chunk so that no client can mistake the cut stream for a complete answer
            expert.breaker.record_failure()
            self.gw.metrics.upstream_errors.labels(expert.name, "broken").inc()
            self.status = 502
            msg = f"expert {expert.name} broke off the stream: {e!r}"
            await send({"type": "http.response.body", "body": sse_error_event(502, msg), "more_body": True})
            self._stream_cut(expert, "broken", msg)
            return
        self.done = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})


REJECT_REASONS = {413: "too_large", 415: "media_type"}


async def handle_completion(gw: Gateway, scope: Scope, receive: Receive, path: str) -> Response:
    """Endpoint body shared by /v1/chat/completions and /v1/completions (raw ASGI scope and receive: it
    runs for every request, and needs three headers and the body)."""
    t0 = time.perf_counter()
    lim = gw.limits
    if gw.in_flight >= lim.max_in_flight:
        gw.metrics.rejected.labels("overloaded").inc()
        return error_response(
            503,
            f"gateway is at its limit of {lim.max_in_flight} requests in flight; retry later",
            headers={"Retry-After": str(lim.retry_after_s)},
        )
    head = request_head(scope["headers"], _FORWARD)
    try:
        check_content_type(head.content_type)
        raw = await read_body_asgi(receive, lim.max_body_bytes, head.content_length)
        parsed = parse_body(raw, max_depth=lim.max_json_depth, max_digits=lim.max_number_digits)
        body = parsed.obj
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
        gw.metrics.rejected.labels(REJECT_REASONS.get(e.status, "bad_request")).inc()
        return error_response(e.status, e.message, param=e.param)
    gw.in_flight += 1  # released by RelayResponse.__call__
    return RelayResponse(
        gw,
        expert=expert,
        cluster=cluster,
        policy=kind,
        body=parsed,
        raw=raw,
        path=path,
        headers=head.forward,
        text=text,
        t0=t0,
    )
