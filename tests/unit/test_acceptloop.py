"""BatchAcceptLoop: a connection burst is accepted in a few loop iterations, even while the loop is busy."""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from typing import Any

import pytest

from system import acceptloop
from system.acceptloop import BatchAcceptServer, new_event_loop

BURST = 300


class _Counting(asyncio.Protocol):
    made: list[int]
    iteration: list[int]

    def connection_made(self, transport: Any) -> None:
        self.made.append(self.iteration[0])


def _run(main: Any) -> None:
    with asyncio.Runner(loop_factory=new_event_loop) as r:
        r.run(main)


def _recording(made: list[int]) -> type[asyncio.Protocol]:
    """A protocol class that appends 1 to `made` for every connection set up."""

    class Recording(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            made.append(1)

    return Recording


def _burst_iterations(loop_factory: Any, busy_s: float = 0.002) -> tuple[int, int]:
    """Queue BURST connections in the kernel while the loop runs ~busy_s per iteration; return (connections
    accepted, loop iterations it took from the first to the last)."""

    async def main() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        iteration = [0]
        made: list[int] = []
        proto = type("P", (_Counting,), {"made": made, "iteration": iteration})
        server = await loop.create_server(proto, "127.0.0.1", 0, backlog=4096)
        port = server.sockets[0].getsockname()[1]
        running = True

        def busy() -> None:  # one callback per iteration: a loop with real work in every turn
            iteration[0] += 1
            t = time.perf_counter()
            while time.perf_counter() - t < busy_s:
                pass
            if running:
                loop.call_soon(busy)

        # connect() completes in the kernel (the accept queue) without the server's help
        socks = []
        for _ in range(BURST):
            s = socket.socket()
            s.connect(("127.0.0.1", port))
            socks.append(s)
        start = iteration[0]
        loop.call_soon(busy)
        deadline = time.monotonic() + 20
        while len(made) < BURST and time.monotonic() < deadline:
            await asyncio.sleep(0)
        running = False
        server.close()
        await server.wait_closed()
        for s in socks:
            s.close()
        return len(made), (max(made) - start if made else -1)

    with asyncio.Runner(loop_factory=loop_factory) as r:
        return r.run(main())


def test_a_burst_is_accepted_in_a_few_iterations_while_the_loop_is_busy() -> None:
    accepted, iterations = _burst_iterations(new_event_loop)
    assert accepted == BURST
    # 128 per wake-up: 300 connections in 3 wake-ups (a couple more for the tasks that attach them)
    assert iterations <= 10, iterations


def test_stock_uvloop_accepts_one_per_iteration_which_is_why_this_exists() -> None:
    uvloop = pytest.importorskip("uvloop")
    accepted, iterations = _burst_iterations(uvloop.new_event_loop)
    if iterations < BURST // 2:
        pytest.skip(f"this libuv accepts in batches ({iterations} iterations): BatchAcceptLoop not needed")
    assert accepted == BURST


def test_server_surface_and_close_stops_accepting() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        got: list[bytes] = []

        class Echo(asyncio.Protocol):
            def connection_made(self, transport: Any) -> None:
                self.t = transport

            def data_received(self, data: bytes) -> None:
                got.append(data)
                self.t.write(data.upper())

        server = await loop.create_server(Echo, "127.0.0.1", 0)
        assert isinstance(server, BatchAcceptServer) and server.is_serving()
        port = server.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"ping")
        assert await r.readexactly(4) == b"PING"
        w.close()
        server.close()
        await server.wait_closed()
        assert not server.is_serving()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)

    _run(main())


def test_a_passed_listening_socket_is_served_in_batches_too() -> None:
    """uvicorn's --workers path hands each process the parent's bound socket."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = await loop.create_server(asyncio.Protocol, sock=sock, backlog=16)
        assert isinstance(server, BatchAcceptServer)
        _r, w = await asyncio.open_connection(*sock.getsockname())
        w.close()
        server.close()

    _run(main())


def test_out_of_fds_pauses_accepting_then_resumes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(acceptloop, "RETRY_S", 0.05)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        made: list[int] = []
        server = await loop.create_server(_recording(made), "127.0.0.1", 0)
        listener = server._sockets[0]
        real_accept = listener.accept
        fails = [1]

        class Flaky:  # socket.accept is read-only on the socket object: wrap the socket instead
            def __getattr__(self, name: str) -> Any:
                return getattr(listener, name)

            def accept(self) -> Any:
                if fails[0]:
                    fails[0] -= 1
                    raise OSError(errno.EMFILE, "Too many open files")
                return real_accept()

        flaky = Flaky()
        loop.remove_reader(listener.fileno())
        loop.add_reader(listener.fileno(), server._accept, flaky)
        port = listener.getsockname()[1]
        _r, w = await asyncio.open_connection("127.0.0.1", port)
        # the first wake-up hit EMFILE: accepting stopped, and came back RETRY_S later
        for _ in range(200):
            if made:
                break
            await asyncio.sleep(0.01)
        assert made == [1] and fails == [0]
        w.close()
        server.close()

    _run(main())


def test_connections_accepted_but_not_yet_set_up_are_dropped_by_close() -> None:
    """uvicorn shuts down the connections it knows of at close(), then waits for all to end: one set up after
    close() would keep it waiting for ever."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        made: list[int] = []
        server = await loop.create_server(_recording(made), "127.0.0.1", 0)
        listener = server._sockets[0]
        clients = [socket.create_connection(listener.getsockname()) for _ in range(3)]
        loop.remove_reader(listener.fileno())
        server._accept(listener)  # accepted, their set-up tasks not run yet
        assert len(server._pending) == 3
        server.close()
        for _ in range(20):
            await asyncio.sleep(0)
        assert made == [] and not server._pending
        for c in clients:
            c.settimeout(5)
            assert c.recv(1) == b""  # closed by the server
            c.close()

    _run(main())
