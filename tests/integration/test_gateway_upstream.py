"""The raw upstream client (`system.gateway.upstream`) against scripted loopback servers, and the
gateway's two upstream clients relaying the same bytes."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest

from system.gateway.upstream import UpstreamConnectError, UpstreamPool
from system.processes import free_port
from tests.integration.fakes import KeywordClassifier, gateway_in_process
from tests.integration.test_gateway_fake import chat, make_cfg, shared  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(60)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(
        next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1]
    )
    return head, await reader.readexactly(length)


@contextlib.asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """A scripted HTTP server on a free port; yields its URL and the list of accepted connections' ids."""
    conns: list[int] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.append(id(writer))
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1/chat/completions", conns
    finally:
        srv.close()


async def test_keep_alive_reuse_headers_and_whole_body() -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, body = await read_request(reader)
            seen.append(head + body)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length: 2\r\n\r\n{}")
            await writer.drain()

    pool = UpstreamPool(limit=10, connect_timeout_s=5)
    async with server(handler) as (url, conns):
        for _ in range(3):
            r = await pool.post(url, b'{"a":1}', {"x-request-id": "abc", "evil": "a\r\nb: c"})
            assert r.status == 200 and r.headers.get("Content-Type") == "application/json"
            assert await r.read() == b"{}"
            r.release()
        assert len(conns) == 1  # one connection, reused
        assert pool.stats() == {"in_use": 0, "idle": 1}
    assert seen[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"x-request-id: abc\r\n" in seen[0] and b"evil" not in seen[0]  # no header injection
    assert seen[0].endswith(b'\r\n\r\n{"a":1}')
    pool.close()


def _first_chunk_then(tail: bytes) -> Handler:
    """A streaming upstream: head and a first chunk, then `tail` in one write 50 ms later; the connection is
    kept open until the client closes it."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(STREAM_HEAD + chunk(b"data: 1\n\n"))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(tail)
        await writer.drain()
        await reader.read()

    return handler


async def test_stream_is_piped_with_reads_coalesced_and_back_pressure(body_reader: str) -> None:
    # the second write reaches the gateway as one read
    handler = _first_chunk_then(chunk(b"data: 2\n\n") + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")

    pool = UpstreamPool(limit=10, connect_timeout_s=5)
    out = _Out()
    flow = _Flow()
    cycle = SimpleNamespace(disconnected=False)
    progress = SimpleNamespace(last_io=0.0)

    async with server(handler) as (url, _):
        r = await pool.post(url, b"{}", {})
        assert r.status == 200
        flow.write_paused = True  # the client is "full"
        task = asyncio.create_task(r.pipe(out, cycle, flow, progress))
        await asyncio.sleep(0.2)
        assert out.writes == [b"9\r\ndata: 1\n\n\r\n"]  # the expert is no longer read
        assert progress.last_io > 0
        flow.write_paused = False
        flow.drained.set()
        await asyncio.wait_for(task, 5)
        # two chunks and the end of one read: one write; httptools' data re-framed as one chunk followed by
        # the terminator, the C tracker's the bytes as they came
        assert out.writes[1:] == [
            b"17\r\ndata: 2\n\ndata: [DONE]\n\n\r\n0\r\n\r\n"
            if body_reader == "python"
            else chunk(b"data: 2\n\n") + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
        ]
        assert r.terminated
        r.release()
        assert pool.stats() == {"in_use": 0, "idle": 1}
    pool.close()


async def test_a_terminator_read_alone_is_written_alone(body_reader: str) -> None:
    handler = _first_chunk_then(b"0\r\n\r\n")

    pool = UpstreamPool(limit=10, connect_timeout_s=5)
    out = _Out()
    async with server(handler) as (url, _):
        r = await pool.post(url, b"{}", {})
        progress = SimpleNamespace(last_io=0.0)
        await asyncio.wait_for(r.pipe(out, SimpleNamespace(disconnected=False), _Flow(), progress), 5)
        assert out.writes == [b"9\r\ndata: 1\n\n\r\n", b"0\r\n\r\n"]
        assert r.terminated
        r.release()
    pool.close()


async def test_piped_bytes_are_dropped_once_the_client_is_gone(body_reader: str) -> None:
    handler = _first_chunk_then(chunk(b"data: 2\n\n") + b"0\r\n\r\n")

    pool = UpstreamPool(limit=10, connect_timeout_s=5)
    out = _Out()
    cycle = SimpleNamespace(disconnected=False)
    async with server(handler) as (url, _):
        r = await pool.post(url, b"{}", {})
        task = asyncio.create_task(r.pipe(out, cycle, _Flow(), SimpleNamespace(last_io=0.0)))
        for _ in range(100):
            if out.writes:
                break
            await asyncio.sleep(0.01)
        cycle.disconnected = True
        await asyncio.wait_for(task, 5)
        assert out.writes == [b"9\r\ndata: 1\n\n\r\n"]
        assert not r.terminated  # the client never got the end: nothing may pretend it did
        r.release()
    pool.close()


@pytest.mark.parametrize("cut", [1, 2, 3, 4, 5])
async def test_a_head_whose_end_is_split_across_reads_is_read_right(cut: int, body_reader: str) -> None:
    """The head's blank line cut `cut` bytes from its end: with the C tracker the body starts after the
    CRLFCRLF found across the two reads (`_Conn.head_tail`), and keep-alive serves a second answer."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):
            await read_request(reader)
            writer.write(STREAM_HEAD[:-cut])
            await writer.drain()
            await asyncio.sleep(0.05)  # two reads on the gateway's side
            writer.write(STREAM_HEAD[-cut:] + chunk(b"data: 1\n\n") + chunk(b"data: 2\n\n") + b"0\r\n\r\n")
            await writer.drain()

    pool = UpstreamPool(limit=10, connect_timeout_s=5)
    async with server(handler) as (url, conns):
        for _ in range(2):
            r = await pool.post(url, b"{}", {})
            assert r.status == 200
            assert (r.body is not None) == (body_reader == "c")
            assert await asyncio.wait_for(r.read(), 5) == b"data: 1\n\ndata: 2\n\n"
            r.release()
        assert len(conns) == 1
    pool.close()


class _Out:
    """The client transport as the pipe sees it."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return False


class _Flow:
    """uvicorn's FlowControl as the pipe sees it."""

    def __init__(self) -> None:
        self.write_paused = False
        self.drained = asyncio.Event()

    async def drain(self) -> None:
        await self.drained.wait()


@pytest.mark.parametrize(
    ("script", "error"),
    [
        ("close_before_status", aiohttp.ServerDisconnectedError),
        ("close_mid_body", aiohttp.ClientPayloadError),
        ("bad_http", aiohttp.ClientPayloadError),
    ],
)
async def test_failures_raise_aiohttp_classes(script: str, error: type[Exception], body_reader: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        if script == "close_mid_body":
            writer.write(STREAM_HEAD + chunk(b"data: 1\n\n"))
        elif script == "bad_http":
            writer.write(STREAM_HEAD + b"zz\r\nnot a chunk\r\n")
        await writer.drain()
        writer.close()

    pool = UpstreamPool(limit=10, connect_timeout_s=5)
    async with server(handler) as (url, _):
        with pytest.raises(error):
            r = await pool.post(url, b"{}", {})
            while await r.readany():
                pass
        r = None
    assert pool.stats()["in_use"] == 0 or script != "close_before_status"
    pool.close()


async def test_connect_error_and_limit() -> None:
    pool = UpstreamPool(limit=1, connect_timeout_s=5)
    with pytest.raises(UpstreamConnectError, match="cannot connect"):
        await pool.post(f"http://127.0.0.1:{free_port()}/v1/completions", b"{}", {})
    assert pool.stats() == {"in_use": 0, "idle": 0}

    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            await release.wait()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()

    async with server(handler) as (url, conns):
        first = asyncio.create_task(pool.post(url, b"{}", {}))
        second = asyncio.create_task(pool.post(url, b"{}", {}))
        await asyncio.sleep(0.2)
        assert pool.stats()["in_use"] == 1 and len(conns) == 1  # the second request waits for the limit
        release.set()
        r1 = await asyncio.wait_for(first, 5)
        await r1.read()
        r1.release()
        r2 = await asyncio.wait_for(second, 5)
        await r2.read()
        r2.release()
        assert len(conns) == 1  # it got the first one's connection
    pool.close()


async def _stream_bytes(url: str) -> tuple[dict[str, Any], bytes]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(url + "/v1/chat/completions", json=chat("code", stream=True, max_tokens=4)) as r,
    ):
        return dict(r.headers), await r.read()


async def test_both_upstream_clients_relay_the_same_stream(shared: list[int], body_reader: str) -> None:  # noqa: F811
    out = {}
    for client in ("raw", "aiohttp"):
        cfg = make_cfg(shared, server={"upstream_client": client})
        async with gateway_in_process(cfg, KeywordClassifier()) as url:
            out[client] = await _stream_bytes(url)
    (h_raw, b_raw), (h_aio, b_aio) = out["raw"], out["aiohttp"]
    assert h_raw["x-router-expert"] == h_aio["x-router-expert"] == "e1"
    assert b_raw.count(b"data: ") == b_aio.count(b"data: ") >= 5  # 4 tokens, final events, [DONE]
    assert b_raw.endswith(b"data: [DONE]\n\n") and b_aio.endswith(b"data: [DONE]\n\n")
    assert events(b_raw) == events(b_aio)  # the same events, apart from ids and times


@pytest.mark.parametrize("together", [True, False], ids=["end-with-last-read", "end-read-alone"])
async def test_keep_alive_client_gets_each_stream_terminated_once(together: bool, body_reader: str) -> None:
    """Streams whose terminating chunk the pipe writes itself (with the last bytes, or alone): on one
    keep-alive client connection, every response ends with exactly one terminator and the next request is
    answered on the same connection (uvicorn's cycle completed without a second terminator)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if head.startswith(b"GET"):  # the gateway's health checks
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                continue
            length = next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))
            await reader.readexactly(int(length.split(b":")[1]))
            writer.write(STREAM_HEAD + chunk(b"data: 1\n\n"))
            await writer.drain()
            await asyncio.sleep(0.02)
            last = chunk(b"data: [DONE]\n\n")
            if together:
                writer.write(last + b"0\r\n\r\n")
            else:
                writer.write(last)
                await writer.drain()
                await asyncio.sleep(0.02)
                writer.write(b"0\r\n\r\n")
            await writer.drain()

    async with server(handler) as (up_url, _):
        port = int(up_url.split(":")[2].split("/")[0])
        cfg = make_cfg([port], policy={"kind": "round_robin"})
        async with gateway_in_process(cfg, KeywordClassifier()) as url:
            host, gw_port = url.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(gw_port))
            body = json.dumps(chat("hi", stream=True)).encode()
            request = (
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(body), body)
            )
            answers = []
            for _ in range(3):  # all on this one connection
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower()
                answers.append(await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5))
            writer.write_eof()
            rest = await asyncio.wait_for(reader.read(), 5)  # the gateway closes after our EOF
            writer.close()
    assert rest == b""  # no stray second terminator after any answer
    for a in answers:
        assert a == chunk(b"data: 1\n\n") + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"


def events(body: bytes) -> list[Any]:
    out = []
    for block in body.split(b"\n\n"):
        if block.startswith(b"data: {"):
            ev = json.loads(block[6:])
            for k in ("id", "created", "sim_timing"):
                ev.pop(k, None)
            out.append(ev)
    return out


OURS = ("RelayResponse", "UpstreamResponse", "_Conn", "ParsedBody")


def cyclic_garbage(names: tuple[str, ...]) -> dict[str, int]:
    """Objects of these types that only the cyclic GC would free (collected here, then dropped)."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return dict(Counter(type(o).__name__ for o in gc.garbage if type(o).__name__ in names))
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


async def test_relayed_requests_leave_no_cyclic_garbage(shared: list[int], body_reader: str) -> None:  # noqa: F811
    """Every object of a relayed request is freed by reference counting when it ends: a request left in a
    reference cycle waits for the cyclic GC, whose collections cost the gateway CPU per request."""
    cfg = make_cfg(shared)
    async with gateway_in_process(cfg, KeywordClassifier()) as url, aiohttp.ClientSession() as s:
        gc.collect()
        gc.disable()  # nothing is collected behind the test's back while the requests run
        try:
            for stream in (True, False, True, False):
                body = chat("code" if stream else "hi", stream=stream, max_tokens=3)
                async with s.post(url + "/v1/chat/completions", json=body) as r:
                    assert r.status == 200
                    await r.read()
            # keep-alive requests: uvicorn's request cycle is freed too
            after_requests = cyclic_garbage((*OURS, "RequestResponseCycle"))
            async with s.post(url + "/v1/chat/completions", json=chat("hi", stream=True)) as r:
                await r.content.readline()  # the client leaves mid-stream: the upstream connection is closed
            await asyncio.sleep(0.3)  # the gateway sees the disconnect and ends the relay
            # (uvicorn's own protocol object of the closed client connection is a cycle: not ours)
            after_disconnect = cyclic_garbage(OURS)
        finally:
            gc.enable()
    assert after_requests == {}, f"request objects left to the cyclic GC: {after_requests}"
    assert after_disconnect == {}, f"objects of a cancelled relay left to the cyclic GC: {after_disconnect}"


async def test_start_up_logs_which_hot_paths_run(
    shared: list[int],  # noqa: F811
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from system import speedups

    caplog.set_level(logging.INFO, logger="expert_router.gateway")
    monkeypatch.setattr(speedups, "MODE", "python (a test)")
    async with gateway_in_process(make_cfg(shared), KeywordClassifier()):
        pass
    assert "hot paths: python (a test)" in caplog.text
