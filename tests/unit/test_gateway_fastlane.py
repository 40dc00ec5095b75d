"""The fast lane's response head is byte for byte what uvicorn's own `send` writes, or nothing at all."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import pytest
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from system.gateway.fastlane import start_chunked

DEFAULTS = [(b"server", b"uvicorn"), (b"date", b"Tue, 01 Dec 2026 00:00:00 GMT")]
HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"x-router-expert", b"e1"),
    (b"x-router-cluster", b"3"),
    (b"x-router-overhead-ms", b"0.512"),
]


class _Transport:
    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


def _cycle(keep_alive: bool) -> tuple[RequestResponseCycle, _Transport]:
    t = _Transport()
    cycle = RequestResponseCycle(
        scope={"type": "http", "method": "POST", "headers": []},  # type: ignore[typeddict-item]
        transport=t,  # type: ignore[arg-type]
        flow=FlowControl(t),  # type: ignore[arg-type]
        logger=logging.getLogger("test"),
        access_logger=logging.getLogger("test.access"),
        access_log=False,
        default_headers=DEFAULTS,
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=keep_alive,
        on_response=lambda: None,
    )
    return cycle, t


async def _send_all(cycle: RequestResponseCycle, *, start: bool, status: int) -> None:
    if start:
        await cycle.send({"type": "http.response.start", "status": status, "headers": HEADERS})
    await cycle.send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
    await cycle.send({"type": "http.response.body", "body": b"", "more_body": False})


@pytest.mark.parametrize("keep_alive", [True, False])
@pytest.mark.parametrize("status", [200, 429])
async def test_head_and_body_are_the_bytes_uvicorn_writes(keep_alive: bool, status: int) -> None:
    ours, t_ours = _cycle(keep_alive)
    ref, t_ref = _cycle(keep_alive)
    assert start_chunked(ours, status, HEADERS)
    await _send_all(ours, start=False, status=status)  # uvicorn frames the body after our head
    await _send_all(ref, start=True, status=status)
    assert b"".join(t_ours.out) == b"".join(t_ref.out)
    assert ours.response_complete and ref.response_complete
    assert (b"connection: close" in t_ours.out[0]) is not keep_alive
    assert t_ours.closed is t_ref.closed is not keep_alive


async def test_a_value_uvicorn_would_refuse_is_left_to_uvicorn() -> None:
    cycle, t = _cycle(True)
    bad = [*HEADERS, (b"x-router-expert", b"e1\r\nset-cookie: x=1")]
    assert not start_chunked(cycle, 200, bad)
    assert t.out == [] and not cycle.response_started and cycle.chunked_encoding is None
    with pytest.raises(RuntimeError, match="Invalid HTTP header value"):
        await cycle.send({"type": "http.response.start", "status": 200, "headers": bad})


async def test_other_servers_started_responses_and_gone_clients_are_left_alone() -> None:
    assert not start_chunked(None, 200, HEADERS)  # not uvicorn's httptools cycle (h11, a test client)
    assert not start_chunked(SimpleNamespace(disconnected=False), 200, HEADERS)
    started, t = _cycle(True)
    await started.send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    assert not start_chunked(started, 200, HEADERS) and len(t.out) == 1
    for status in (204, 304):  # bodiless answers keep uvicorn's own framing rules
        fresh, t = _cycle(True)
        assert not start_chunked(fresh, status, HEADERS) and t.out == [] and not fresh.response_started
    gone, t = _cycle(True)
    gone.disconnected = True
    assert not start_chunked(gone, 200, HEADERS) and t.out == []
