"""HTTP edge protection for our uvicorn servers (gateway and sim): fd limit, connection and in-flight caps,
idle / header / body timeouts, header size limits; all errors in the OpenAI shape.

uvicorn's httptools protocol gives a keep-alive timeout (armed only after a first response) and
`limit_concurrency` (a plain-text 503 for every path, /health included). It has no header size limit, no
header or body read timeout, and never times out a connection that sends nothing at all. `edge_protocol`
subclasses it to add those; `uvicorn_options` gives the matching uvicorn.Config keywords.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
from typing import Any

import httptools
from pydantic import Field
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from system.config import StrictModel

log = logging.getLogger("expert_router.edge")

# fds kept free for everything that is not a client connection (listening socket, logs, upstream pool
# growth, health checks, the event loop's own)
FD_RESERVE = 128
CUT_EXTENSION = "expert_router.cut"
LINGER_S = 2.0  # after an error answer, how long input is still read (and dropped) before closing
_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}
_TYPES = {503: "service_unavailable"}


class EdgeConfig(StrictModel):
    """Limits of one HTTP server (see docs/GATEWAY.md, *Limits at the edge*)."""

    max_connections: int = Field(default=8192, ge=1)
    max_in_flight: int | None = Field(default=None, ge=1, description="Server-wide; None: the app decides.")
    idle_timeout_s: float = Field(default=30.0, gt=0)
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=30.0, gt=0)
    max_header_bytes: int = Field(default=32 * 1024, ge=1024)
    max_headers: int = Field(default=100, ge=1)
    retry_after_s: int = Field(default=1, ge=0)
    # answered even beyond max_connections / max_in_flight, so that monitoring still sees the server
    exempt_paths: tuple[str, ...] = ("/health", "/metrics")
    # half of the fds for client connections (each may hold one upstream connection too): see fit_to_fds
    fds_per_connection: int = Field(default=2, ge=1)


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (a server with ~1,000 streams needs ~2,000 fds, and the
    common soft limit is 1,024). Returns the (soft, hard) limits in force afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def fit_to_fds(cfg: EdgeConfig, soft_limit: int) -> EdgeConfig:
    """Lower max_connections to what the fd limit can hold, so that overload is a clean 503 instead of
    accept() failing with EMFILE (and health checks or upstream connects failing with it)."""
    fits = max(16, (soft_limit - FD_RESERVE) // cfg.fds_per_connection)
    if cfg.max_connections > fits:
        log.warning(
            "fd limit %d holds about %d connections: max_connections lowered from %d",
            soft_limit,
            fits,
            cfg.max_connections,
        )
        return cfg.model_copy(update={"max_connections": fits})
    return cfg


def error_bytes(status: int, message: str, extra_headers: bytes = b"") -> bytes:
    """A complete HTTP/1.1 error response (OpenAI error body) that closes the connection."""
    err = {
        "message": message,
        "type": _TYPES.get(status, "invalid_request_error"),
        "param": None,
        "code": status,
    }
    body = json.dumps({"error": err}).encode()
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n"
        b"%s\r\n%s" % (status, _REASONS.get(status, b"Error"), len(body), extra_headers, body)
    )


class _HeadTooLarge(Exception):
    pass


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of `edge` (set on the subclass by `edge_protocol`)."""

    edge: EdgeConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._edge_timer: asyncio.TimerHandle | None = None
        self._in_head = True  # reading a request line + headers (or waiting for one)
        self._head_started = False  # the parser began a request's head (on_message_begin)
        self._in_body = False
        self._head_bytes = 0  # bytes received while in the head: bounds memory before the parser sees it
        self._head_size = 0  # exact: url + header names and values
        self._head_count = 0
        self._over_cap = False
        self._discarding = False  # an error was answered: the rest of the input is dropped

    # -- timers ------------------------------------------------------------------------------------------
    def _arm(self, delay: float, callback: Any) -> None:
        self._disarm()
        self._edge_timer = self.loop.call_later(delay, callback)

    def _disarm(self) -> None:
        if self._edge_timer is not None:
            self._edge_timer.cancel()
            self._edge_timer = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # admission by arrival: a connection beyond the cap is answered 503 (then closed); the ones within
        # it are served even while a burst of later ones is still open
        self._over_cap = len(self.connections) > self.edge.max_connections
        # uvicorn arms its keep-alive timer only after a first response: a socket that never sends a byte
        # would be held forever
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _reject(self, status: int, message: str, extra_headers: bytes = b"") -> None:
        """Answer an error outside any ASGI cycle and close the connection."""
        self._disarm()
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if cycle.response_started:  # the app is answering already: just cut
                self.transport.close()
                return
            # the app may still be waiting for the body: it sees a disconnect, and its sends are dropped
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.write(error_bytes(status, message, extra_headers))
        self._linger()

    def _linger(self) -> None:
        """Close after an error answer without losing it: closing a socket with unread input sends a
        reset, which can discard the answer before the client reads it. So: send FIN after the answer,
        drop whatever still arrives, and close for good when the client does, or after LINGER_S."""
        self._discarding = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._arm(LINGER_S, self.transport.close)

    def _head_timeout(self) -> None:
        self._edge_timer = None
        self._reject(408, f"request headers not received within {self.edge.header_timeout_s:g} s")

    def _body_timeout(self) -> None:
        self._edge_timer = None
        self._reject(408, f"request body not received within {self.edge.body_timeout_s:g} s")

    # -- parsing -----------------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        self._unset_keepalive_if_required()
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except _HeadTooLarge:
            self._head_too_large()
            return
        except httptools.HttpParserCallbackError as e:
            if isinstance(e.__context__, _HeadTooLarge):
                self._head_too_large()
                return
            raise
        except httptools.HttpParserError as e:
            self.logger.info("invalid HTTP request received: %s", e)
            self._reject(400, "invalid HTTP request")
            return
        except httptools.HttpParserUpgrade:
            self._reject(400, "protocol upgrades are not supported")
            return
        if self._in_head and self._head_bytes > self.edge.max_header_bytes:
            self._head_too_large()
            return
        # A timer only for a head or a body still incomplete after this read (the header timeout counts from
        # the read that brought the head's first bytes, the body timeout from the end of the head): a request
        # that arrives whole, the common case, arms none, where arming one in each callback made and freed
        # two loop timers per request.
        if self._edge_timer is None and not self._discarding:
            if self._in_body:
                self._arm(self.edge.body_timeout_s, self._body_timeout)
            elif self._in_head and (self._head_bytes or self._head_started):
                self._arm(self.edge.header_timeout_s, self._head_timeout)

    def _head_too_large(self) -> None:
        e = self.edge
        self._reject(
            431, f"request line and headers exceed {e.max_header_bytes} bytes or {e.max_headers} headers"
        )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_started = True  # (a pipelined head that began after a complete request in the same read)
        self._head_size = self._head_count = 0
        self.scope["extensions"] = {CUT_EXTENSION: self._cut}

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        if self._head_size > self.edge.max_header_bytes:
            raise _HeadTooLarge
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        self._head_count += 1
        if self._head_size > self.edge.max_header_bytes or self._head_count > self.edge.max_headers:
            raise _HeadTooLarge
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = self._head_started = False
        self._head_bytes = 0
        self._in_body = True
        self._disarm()  # a header timer (head in several reads); the body's is armed after the read
        reason = self._over_capacity()
        if reason is None:
            super().on_headers_complete()
            return
        app = self.app
        self.app = _overloaded(reason, self.edge.retry_after_s)
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def _over_capacity(self) -> str | None:
        e = self.edge
        over_conn = self._over_cap
        over_tasks = (
            e.max_in_flight is not None
            and len(self.tasks) >= e.max_in_flight
            # uvloop runs I/O callbacks before the call_soon queue, so a request that just finished can still
            # be in the set (its discard callback not run yet) when the client's next request arrives
            and sum(1 for t in self.tasks if not t.done()) >= e.max_in_flight
        )
        if not (over_conn or over_tasks):
            return None
        path = httptools.parse_url(self.url).path.decode("latin-1")
        if path in e.exempt_paths:
            return None
        if over_conn:
            return f"server is at its limit of {e.max_connections} connections; retry later"
        return f"server is at its limit of {e.max_in_flight} requests in flight; retry later"

    def on_message_complete(self) -> None:
        self._in_body = False
        self._in_head = True  # whatever comes next on this connection is the next request's head
        self._head_started = False
        self._head_bytes = 0
        self._disarm()
        super().on_message_complete()

    def _cut(self) -> None:
        """ASGI extension for the app: end this connection now without completing the response (a relayed
        stream broke), without uvicorn logging an ERROR for the incomplete response."""
        cycle = self.cycle
        if cycle is not None:
            cycle.keep_alive = False
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()


def _overloaded(message: str, retry_after_s: int) -> Any:
    body = json.dumps(
        {"error": {"message": message, "type": "service_unavailable", "param": None, "code": 503}}
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(retry_after_s).encode()),
        (b"connection", b"close"),
    ]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return app


def edge_protocol(cfg: EdgeConfig) -> type[EdgeProtocol]:
    """An EdgeProtocol class bound to `cfg`, for uvicorn.Config(http=...)."""
    return type("BoundEdgeProtocol", (EdgeProtocol,), {"edge": cfg})


def uvicorn_options(cfg: EdgeConfig) -> dict[str, Any]:
    """uvicorn.Config keywords that enforce `cfg` (use with loop="uvloop" or "asyncio")."""
    return {
        "http": edge_protocol(cfg),
        "timeout_keep_alive": cfg.idle_timeout_s,  # keep-alive idle; also armed at connect (EdgeProtocol)
        "limit_concurrency": None,  # ours answers 503 in the OpenAI shape, and never for /health
    }
