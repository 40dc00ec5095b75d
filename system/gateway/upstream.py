"""Lean HTTP/1.1 upstream client for the relay: a keep-alive pool of asyncio protocols parsed by httptools.

Why not aiohttp on the hot path: each streamed chunk there costs a parser callback, a StreamReader feed, a
future completed, a task woken, `readany` and an ASGI `send` coroutine. Here the upstream socket's
`data_received` writes the chunk straight to the client's transport (`UpstreamResponse.pipe`), one callback
and one `write` per upstream read, several chunks of one read coalesced into one write. Where the C extension
is built (`system/_speedups.c`), a chunked body is not parsed by httptools at all: httptools stops at the end
of the head and a C tracker follows the chunk framing, so that a piped read goes to the client as it came (the
expert's framing is valid framing for the client) with no Python parse or framing per chunk; what arrives
before the pipe starts is decoded as before. Errors are raised as
aiohttp's exception classes so the relay's failure handling is the same for both clients:

- `UpstreamConnectError` (a `ClientConnectorError`): the TCP connect failed; nothing reached the expert;
- `aiohttp.ConnectionTimeoutError`: the connect timed out; nothing reached the expert;
- `aiohttp.ServerDisconnectedError`: the connection closed after the request was written, before a status
  line (the expert may have started the work);
- `aiohttp.ClientPayloadError`: the connection broke, or sent bad HTTP, after the status line.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httptools

from system import speedups

IDLE_S = 30.0  # an idle keep-alive connection older than this is closed instead of reused


class UpstreamConnectError(aiohttp.ClientConnectorError):
    def __init__(self, host: str, port: int, os_error: OSError) -> None:
        super().__init__(SimpleNamespace(host=host, port=port, ssl=False), os_error)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return f"cannot connect to {self.host}:{self.port} [{self.strerror or self.os_error!r}]"


class _SwitchToTracker(Exception):
    """Raised by `_Conn.on_headers_complete` to stop httptools at the end of a chunked response's head: the
    body is then read by a `speedups.ChunkedBody` (see `_Conn.data_received`)."""


class _Headers(dict[str, str]):
    """Response headers, names lower-cased (the relay only reads a few)."""

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        return dict.get(self, name.lower(), default)


class _Conn(asyncio.Protocol):
    """One keep-alive connection to an expert; carries one response at a time."""

    def __init__(self, pool: UpstreamPool, key: tuple[str, int], loop: asyncio.AbstractEventLoop) -> None:
        self.pool, self.key, self.loop = pool, key, loop
        # body pieces of the read in progress: the parser's `on_body` is this list's own `append`, a C call
        # per chunk instead of a Python method frame (httptools looks the callbacks up when it is built)
        self.pieces: list[bytes] = []
        self.on_body = self.pieces.append
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.resp: UpstreamResponse | None = None
        self.idle_since = 0.0
        # the head's last bytes of earlier reads, to find where the body starts when the head ends in a read
        self.head_tail = b""

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        r = self.resp
        if r is None:  # bytes nobody asked for: the connection is not reusable
            self.close()
            return
        out = r.out
        tracker = r.body
        if tracker is not None:
            # a chunked body read by the C tracker (see `_switch`): piped, the bytes pass as they came (the
            # expert's chunk framing is the client's, its terminating chunk included: no parse and no
            # framing in Python); buffered, the tracker returns the chunk data
            try:
                chunk = tracker.feed(data, out is not None)
            except ValueError as e:
                r.fail(aiohttp.ClientPayloadError(f"bad HTTP from upstream: {e}"))
                self.close()
                return
            if tracker.complete:
                r.complete = True
                if tracker.extra:  # bytes after the end of the answer: the connection is not reusable
                    r.keep_alive = False
            touched = True
        else:
            pieces = self.pieces
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError as e:
                if isinstance(e.__context__, _SwitchToTracker):
                    self._switch(r, data)
                    return
                r.fail(aiohttp.ClientPayloadError(f"bad HTTP from upstream: {e}"))
                self.close()
            if not r.status:
                self.head_tail = (self.head_tail + data)[-3:]
            chunk = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            pieces.clear()
            touched = bool(chunk) or (r.complete and not r.terminated)
            if out is not None and touched:
                # piped: in chunked framing. Every body piece of one read leaves in one write, and so does
                # the stream's terminating chunk once the upstream's body is complete: one write (one TCP
                # segment) less per request.
                chunk = b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunk else b""
                if r.complete and r.exc is None:
                    chunk += b"0\r\n\r\n"
        if out is not None:
            if touched:
                # piped: straight to the client, inline (runs per chunk: no call to a closure, no task
                # woken; `pipe` only wakes up for back-pressure and the end)
                r.last_io = self.loop.time()  # (on this object: the watchdog finds it through the relay)
                # a client gone (or going) is not the expert's failure: drop the bytes, the relay's
                # disconnect hook cancels it
                if chunk and not r.out_cycle.disconnected and not out.is_closing():
                    out.write(chunk)
                    if r.complete and r.exc is None:
                        r.terminated = True  # the stream's terminating chunk went out with these bytes
                if r.out_flow.write_paused:
                    r.wake()
        elif chunk:
            r.buf.append(chunk)
            r.wake()
        if r.complete:
            r.finish()

    def _switch(self, r: UpstreamResponse, data: bytes) -> None:
        """httptools stopped at the end of a chunked head (`on_headers_complete`): the rest of `data` is body,
        for the response's tracker. The old parser is left in its error state: the next response gets a new
        one. (`head_tail` is reset per response, in `UpstreamPool.post`.)"""
        self.parser = httptools.HttpResponseParser(self)
        seen = self.head_tail + data
        end = seen.find(b"\r\n\r\n")
        if end < 0:  # cannot happen after a strict parse; fail loudly rather than guess where the body starts
            r.fail(aiohttp.ClientPayloadError("bad HTTP from upstream: no end of head found"))
            self.close()
            return
        r.wake()  # the head is complete (status and headers are set)
        rest = seen[end + 4 :]
        if rest:
            self.data_received(rest)  # now read by the tracker

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.pool.forget(self)
        r = self.resp
        if r is not None and not r.complete:
            if r.status and r.until_close:  # a body delimited by the connection's end
                r.complete = True
                r.finish()
            elif r.status:
                r.fail(aiohttp.ClientPayloadError(f"upstream closed the connection mid-response ({exc!r})"))
            else:
                r.fail(aiohttp.ServerDisconnectedError(f"upstream closed the connection ({exc!r})"))
        # the connection is over: break its cycles (response <-> connection, parser <-> its callbacks) so
        # reference counting frees it, not the cyclic GC
        self.resp = None
        self.parser = None  # type: ignore[assignment]

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.resp is not None
        self.resp.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        r = self.resp
        assert r is not None
        r.status = self.parser.get_status_code()
        r.keep_alive = self.parser.should_keep_alive()
        h = r.headers
        te = h.get("transfer-encoding", "")
        r.until_close = "content-length" not in h and "chunked" not in te
        if (
            speedups.ChunkedBody is not None
            and te.strip().lower() == "chunked"
            and "content-length" not in h
            and r.status >= 200
            and r.status not in (204, 304)
        ):
            # the body is read by the C tracker from here on (see `data_received`)
            r.body = speedups.ChunkedBody()
            raise _SwitchToTracker
        r.wake()

    def on_message_complete(self) -> None:
        assert self.resp is not None
        self.resp.complete = True

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()


class UpstreamResponse:
    """The answer on one connection: status and headers, then the body buffered or piped to the client."""

    def __init__(self, conn: _Conn) -> None:
        self.conn = conn
        self.status = 0
        self.headers = _Headers()
        self.keep_alive = False
        self.until_close = False
        self.complete = False
        self.exc: BaseException | None = None
        self.buf: list[bytes] = []
        self.waiter: asyncio.Future[None] | None = None
        # set while piped (see `pipe`): the client's transport, its uvicorn cycle and flow control
        self.out: asyncio.Transport | None = None
        self.out_cycle: Any = None
        self.out_flow: Any = None
        self.body: Any = None  # a speedups.ChunkedBody once a chunked body is read by the C tracker
        self.last_io = 0.0  # piped: loop time of the last read (read by the watchdog via `progress.piped`)
        self.terminated = False  # piped: the client's terminating chunk went out with the last body bytes
        self.returned = False

    @property
    def content(self) -> UpstreamResponse:
        """aiohttp's `resp.content.readany()` spelling, for the generic relay loop (a property: an attribute
        pointing at itself would make every response a reference cycle left to the cyclic GC)."""
        return self

    # called by the protocol
    def wake(self) -> None:
        w = self.waiter
        if w is not None:
            self.waiter = None
            if not w.done():
                w.set_result(None)

    def finish(self) -> None:
        self.wake()

    def fail(self, exc: BaseException) -> None:
        if self.exc is None:
            self.exc = exc
        self.wake()

    async def _wait(self) -> None:
        fut = self.conn.loop.create_future()
        self.waiter = fut
        await fut

    # used by the relay
    async def headers_ready(self) -> None:
        while not self.status:
            if self.exc is not None:
                raise self.exc
            await self._wait()

    async def readany(self) -> bytes:
        while not self.buf:
            if self.exc is not None:
                raise self.exc
            if self.complete:
                return b""
            await self._wait()
        data = b"".join(self.buf) if len(self.buf) > 1 else self.buf[0]
        self.buf.clear()
        return data

    async def read(self) -> bytes:
        while not self.complete:
            if self.exc is not None:
                raise self.exc
            await self._wait()
        data = b"".join(self.buf)
        self.buf.clear()
        return data

    async def pipe(self, out: asyncio.Transport, cycle: Any, flow: Any, progress: Any) -> None:
        """Relay the rest of the body to the client transport `out` in chunked framing, written from the
        socket callback (`_Conn.data_received`), with no task wake-up per chunk. `cycle` is uvicorn's
        request cycle (its `disconnected` flag), `flow` its flow control (`write_paused`, `drain`);
        `progress.piped` is this response while it pipes: the read-timeout watchdog takes the later of
        `progress.last_io` and this response's `last_io` (the time of each read, set on this object so
        that a chunk touches one object less). While the client's buffer is full, the expert is not read."""
        if self.buf:
            progress.last_io = self.conn.loop.time()
            if not cycle.disconnected and not out.is_closing():
                data = b"".join(self.buf)
                out.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.buf.clear()
        self.last_io = progress.last_io
        progress.piped = self
        self.out_cycle, self.out_flow = cycle, flow
        self.out = out  # last: from here on _Conn.data_received writes
        transport = self.conn.transport
        assert transport is not None
        try:
            while True:
                if self.exc is not None:
                    raise self.exc
                if self.complete:
                    return
                if flow.write_paused:
                    transport.pause_reading()
                    try:
                        await flow.drain()
                    finally:
                        if not self.conn.lost:
                            transport.resume_reading()
                    continue
                await self._wait()
        finally:
            # drop the references to the client side (no cycle outlives the request, see RelayResponse)
            progress.last_io = max(progress.last_io, self.last_io)
            progress.piped = self.out = self.out_cycle = self.out_flow = None

    def release(self) -> None:
        """Body fully read: the connection goes back to the pool (or is closed if not reusable)."""
        if self.returned:
            return
        self.returned = True
        conn = self.conn
        if self.complete and self.exc is None and self.keep_alive and not conn.lost:
            conn.resp = None
            self.conn.pool.put_back(conn)
        else:
            conn.close()
            conn.pool.done_with(conn)

    def close(self) -> None:
        """Drop the connection (cancelled or broken): the expert sees the disconnect and stops work."""
        if self.returned:
            return
        self.returned = True
        self.conn.close()
        self.conn.pool.done_with(self.conn)


class UpstreamPool:
    """Keep-alive connections per expert address, at most `limit` open at once (more requests wait)."""

    def __init__(self, limit: int, connect_timeout_s: float, idle_s: float = IDLE_S) -> None:
        self.limit, self.connect_timeout_s = limit, connect_timeout_s
        self.idle_s = idle_s  # limits.upstream_keepalive_s: below the experts' own keep-alive timeout
        self.idle: dict[tuple[str, int], list[_Conn]] = {}
        self.in_use: set[_Conn] = set()
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.targets: dict[str, tuple[tuple[str, int], bytes, bytes]] = {}

    def _target(self, url: str) -> tuple[tuple[str, int], bytes, bytes]:
        t = self.targets.get(url)
        if t is None:
            u = urlsplit(url)
            if u.scheme != "http" or not u.hostname:
                raise ValueError(f"the raw upstream client speaks plain http only, not {url!r}")
            port = u.port or 80
            t = ((u.hostname, port), (u.path or "/").encode(), u.netloc.encode())
            self.targets[url] = t
        return t

    def open_count(self) -> int:
        return len(self.in_use) + sum(len(v) for v in self.idle.values())

    async def _acquire(self, key: tuple[str, int]) -> _Conn:
        while True:
            idle = self.idle.get(key)
            now = time.monotonic()
            while idle:
                c = idle.pop()
                if not c.lost and now - c.idle_since < self.idle_s:
                    self.in_use.add(c)
                    return c
                c.close()
            if self.open_count() < self.limit:
                break
            # at the limit: close an idle connection to another expert, else wait for one to be released
            other = next((v for v in self.idle.values() if v), None)
            if other:
                other.pop().close()
                continue
            fut = asyncio.get_running_loop().create_future()
            self.waiters.append(fut)
            await fut
        loop = asyncio.get_running_loop()  # once per new connection (a getpid() call on 3.11)
        conn = _Conn(self, key, loop)
        self.in_use.add(conn)  # counts against the limit while connecting
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await loop.create_connection(lambda: conn, key[0], key[1])
        except TimeoutError:
            self.done_with(conn)
            raise aiohttp.ConnectionTimeoutError(
                f"connect to {key[0]}:{key[1]} timed out after {self.connect_timeout_s:g} s"
            ) from None
        except OSError as e:
            self.done_with(conn)
            raise UpstreamConnectError(key[0], key[1], e) from None
        except BaseException:
            self.done_with(conn)
            conn.close()
            raise
        return conn

    async def post(self, url: str, data: bytes, headers: dict[str, str]) -> UpstreamResponse:
        """Send `data` as a JSON POST and return once the status line and headers have arrived."""
        key, path, host = self._target(url)
        conn = await self._acquire(key)
        resp = UpstreamResponse(conn)
        conn.resp = resp
        conn.head_tail = b""
        head = [
            b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            % (path, host, len(data))
        ]
        for k, v in headers.items():
            if "\r" in v or "\n" in v:  # never let a client's header value split the upstream request
                continue
            head.append(b"%s: %s\r\n" % (k.encode("latin-1"), v.encode("latin-1", "replace")))
        head.append(b"\r\n")
        head.append(data)
        assert conn.transport is not None
        try:
            conn.transport.write(b"".join(head))
            await resp.headers_ready()
        except BaseException:
            resp.close()
            raise
        return resp

    def put_back(self, conn: _Conn) -> None:
        self.in_use.discard(conn)
        conn.idle_since = time.monotonic()
        self.idle.setdefault(conn.key, []).append(conn)
        self._wake_one()

    def done_with(self, conn: _Conn) -> None:
        self.in_use.discard(conn)
        self._wake_one()

    def forget(self, conn: _Conn) -> None:
        """A connection closed by either side: it is no longer idle (in-use ones are released by their
        response)."""
        idle = self.idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)
            self._wake_one()

    def _wake_one(self) -> None:
        while self.waiters:
            w = self.waiters.popleft()
            if not w.done():
                w.set_result(None)
                return

    def stats(self) -> dict[str, int]:
        return {"in_use": len(self.in_use), "idle": sum(len(v) for v in self.idle.values())}

    def close(self) -> None:
        for conns in self.idle.values():
            for c in conns:
                c.close()
        self.idle.clear()
        for c in list(self.in_use):
            c.close()
