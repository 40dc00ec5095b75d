"""A uvloop event loop whose TCP servers accept every waiting connection per wake-up, as asyncio's loop does.

Why: libuv accepts one connection per event-loop iteration (libuv/libuv#3696), so a uvloop server's accept
rate is one connection per loop iteration. A gateway or engine relaying 1,000 streams runs iterations of tens
of milliseconds, i.e. it accepts a few dozen connections a second, and a burst of new connections (users
ramping up; a proxy opening its upstream pool) waits seconds in the kernel's accept queue, its TTFT with it.
CPython's selector loop accepts up to `backlog` connections per wake-up instead. `BatchAcceptLoop` does the
same for plain-TCP servers (up to `accept_batch` per wake-up); everything else is uvloop's.
`docs/GATEWAY.md` ("Accepting connections") has the measurement.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable, Iterable
from typing import Any

import uvloop

log = logging.getLogger("expert_router.accept")

ACCEPT_BATCH = (
    128  # connections accepted per wake-up: bounds the work of one wake-up, as `backlog` does in asyncio
)
RETRY_S = 1.0  # out of fds (EMFILE...): stop accepting this long, as asyncio does
_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class BatchAcceptServer:
    """The asyncio.Server surface uvicorn and our servers use, over listening sockets of our own."""

    def __init__(
        self,
        loop: BatchAcceptLoop,
        sockets: list[socket.socket],
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        batch: int,
    ) -> None:
        self._loop, self._sockets, self._factory, self._batch = loop, sockets, protocol_factory, batch
        self._serving = False
        self._closed = asyncio.Event()
        self._pending: set[asyncio.Task[Any]] = set()

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._sockets)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        self._start()

    def _start(self) -> None:
        if self._serving or self._closed.is_set():
            return
        self._serving = True
        for s in self._sockets:
            self._loop.add_reader(s.fileno(), self._accept, s)

    def _pause(self) -> None:
        for s in self._sockets:
            self._loop.remove_reader(s.fileno())
        self._serving = False

    def _accept(self, sock: socket.socket) -> None:
        loop = self._loop
        for _ in range(self._batch):
            try:
                conn, _addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:  # the client gave up while queued: next one
                continue
            except OSError as e:
                if e.errno not in _RESOURCE_ERRNOS:
                    raise
                # out of fds: every further accept would fail the same way; retry later (asyncio does this)
                log.warning("accept failed (%s): not accepting for %.0f s", e.strerror, RETRY_S)
                self._pause()
                loop.call_later(RETRY_S, self._start)
                return
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = loop.create_task(self._attach(conn))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _attach(self, conn: socket.socket) -> None:
        # A connection accepted before close() but set up after it would never see the server's shutdown
        # (uvicorn shuts down the connections it knows of, then waits for all of them to end): drop it, as
        # a listening socket closed a moment earlier would have.
        if self._closed.is_set():
            conn.close()
            return
        try:
            transport, _protocol = await self._loop.connect_accepted_socket(self._factory, conn)
        except Exception as e:  # the peer left before it was set up: nothing to serve
            log.debug("accepted connection dropped: %r", e)
            conn.close()
            return
        if self._closed.is_set():
            transport.close()

    def close(self) -> None:
        if self._closed.is_set():
            return
        if self._serving:
            self._pause()
        for s in self._sockets:
            s.close()
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def serve_forever(self) -> None:
        self._start()
        await self._closed.wait()

    async def __aenter__(self) -> BatchAcceptServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()


class BatchAcceptLoop(uvloop.Loop):  # type: ignore[misc]
    """uvloop, with `create_server` accepting up to `accept_batch` connections per wake-up (plain TCP)."""

    accept_batch = ACCEPT_BATCH

    async def create_server(  # type: ignore[override]
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: str | Iterable[str] | None = None,
        port: int | None = None,
        *,
        family: int = socket.AF_UNSPEC,
        flags: int = socket.AI_PASSIVE,
        sock: socket.socket | None = None,
        backlog: int = 100,
        ssl: Any = None,
        reuse_address: bool | None = None,
        reuse_port: bool | None = None,
        start_serving: bool = True,
        **kwargs: Any,
    ) -> Any:
        plain = (
            ssl is None and not kwargs and (sock is None or sock.family in (socket.AF_INET, socket.AF_INET6))
        )
        if not plain or self.accept_batch <= 1:
            return await super().create_server(
                protocol_factory,
                host,
                port,
                family=family,
                flags=flags,
                sock=sock,
                backlog=backlog,
                ssl=ssl,
                reuse_address=reuse_address,
                reuse_port=reuse_port,
                start_serving=start_serving,
                **kwargs,
            )
        if sock is not None:
            sock.setblocking(False)
            sock.listen(backlog)  # uvloop listens on a passed socket too; a second listen() only sets backlog
            sockets = [sock]
        else:
            sockets = await self._bind(host, port, family, flags, backlog, reuse_address, reuse_port)
        server = BatchAcceptServer(self, sockets, protocol_factory, self.accept_batch)
        if start_serving:
            server._start()
        return server

    async def _bind(
        self,
        host: str | Iterable[str] | None,
        port: int | None,
        family: int,
        flags: int,
        backlog: int,
        reuse_address: bool | None,
        reuse_port: bool | None,
    ) -> list[socket.socket]:
        """Listening sockets for every address `host` resolves to (as asyncio's create_server binds them)."""
        hosts: list[str | None] = (
            [host] if host is None or isinstance(host, str) else list(host)  # type: ignore[list-item]
        )
        infos: list[tuple[Any, ...]] = []
        for h in hosts:
            infos += await self.getaddrinfo(
                h or None, port, family=family, type=socket.SOCK_STREAM, flags=flags
            )
        sockets: list[socket.socket] = []
        seen: set[tuple[int, Any]] = set()
        try:
            for fam, type_, proto, _canon, addr in infos:
                if (fam, addr) in seen:
                    continue
                seen.add((fam, addr))
                s = socket.socket(fam, type_, proto)
                sockets.append(s)
                if reuse_address is None or reuse_address:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if fam == socket.AF_INET6:  # as asyncio: an IPv6 socket does not also take IPv4
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    s.bind(addr)
                except OSError as e:
                    raise OSError(
                        e.errno, f"error while attempting to bind on address {addr!r}: {e.strerror}"
                    ) from None
                s.setblocking(False)
                s.listen(backlog)
        except BaseException:
            for s in sockets:
                s.close()
            raise
        if not sockets:
            raise OSError(f"getaddrinfo({host!r}) returned no addresses")
        return sockets


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The loop factory for uvicorn (`loop="system.acceptloop:new_event_loop"`) and asyncio.Runner."""
    return BatchAcceptLoop()


def run(main: Any) -> Any:
    """uvloop.run(main) on a BatchAcceptLoop."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)


# uvicorn.Config(loop=...) value for servers that should accept in batches
UVICORN_LOOP = "system.acceptloop:new_event_loop"
