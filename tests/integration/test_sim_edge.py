"""The sim server at the edge: fd limit raised, connection cap, idle and slow clients, huge heads, JSON
limits and content types; every refusal in the OpenAI error shape."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import pytest

from system.engines.sim.launch import sim_command
from system.processes import ServerProcess, free_port
from tests.integration.test_gateway_edge import _closed_after, fds, lower_nofile, nofile

pytestmark = pytest.mark.timeout(120)
JSON = {"content-type": "application/json"}


def test_sim_limits(tmp_path: Path) -> None:
    port = free_port()
    flags = ["--model-name", "tiny", "--max-connections", "3", "--max-in-flight", "1", "--idle-timeout", "1"]
    flags += ["--header-timeout", "1", "--body-timeout", "1", "--max-header-bytes", "8192"]
    proc = ServerProcess(
        [*lower_nofile(1024), *sim_command("debug", port, *flags)],
        name="sim",
        health_url=f"http://127.0.0.1:{port}/health",
        log_path=tmp_path / "sim.log",
    )
    url = f"http://127.0.0.1:{port}"
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

    async def run() -> dict[str, object]:
        seen: dict[str, object] = {}
        async with aiohttp.ClientSession() as s:
            cases = [
                (b"[" * 100_000 + b"]" * 100_000, JSON, 400, "nested deeper"),
                (
                    b'{"model": "tiny", "prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}",
                    JSON,
                    400,
                    "digits",
                ),
                (json.dumps(chat).encode(), {"content-type": "text/plain"}, 415, "Content-Type"),
            ]
            for data, headers, status, fragment in cases:
                async with s.post(url + "/v1/completions", data=data, headers=headers) as r:
                    err = (await r.json())["error"]
                    assert (r.status, err["code"]) == (status, status) and fragment in err["message"]
            async with s.post(url + "/v1/chat/completions", json=chat, headers={"x-big": "b" * 10_000}) as r:
                assert r.status == 431 and "error" in await r.json()
            async with s.post(url + "/v1/chat/completions", json=chat) as r:
                assert r.status == 200  # still serving
        # idle and half-sent requests are closed
        t0 = time.monotonic()
        r1, _ = await asyncio.open_connection("127.0.0.1", port)
        r2, w2 = await asyncio.open_connection("127.0.0.1", port)
        w2.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\ncontent-length: 100\r\n\r\n{")
        (idle, idle_closed), (half, half_closed) = await asyncio.gather(_closed_after(r1), _closed_after(r2))
        seen["closed_after_s"] = time.monotonic() - t0
        assert idle_closed and idle == b""
        assert half_closed and half.startswith(b"HTTP/1.1 408 ")
        async with aiohttp.ClientSession() as s:
            # one request in flight (a long stream): the next gets 503, /health still answers
            long = {**chat, "max_tokens": 1000, "ignore_eos": True, "stream": True}
            async with s.post(url + "/v1/chat/completions", json=long) as held_stream:
                await held_stream.content.readany()
                async with s.post(url + "/v1/chat/completions", json=chat) as r:
                    assert r.status == 503 and r.headers["Retry-After"] == "1"
                    assert "1 requests in flight" in (await r.json())["error"]["message"]
                async with s.get(url + "/health") as r:
                    assert r.status == 200
        # three connections held: the fourth gets 503 with Retry-After, /health still answers
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        await asyncio.sleep(0.1)
        async with aiohttp.ClientSession() as s:
            async with s.post(url + "/v1/chat/completions", json=chat) as r:
                assert r.status == 503 and r.headers["Retry-After"] == "1"
                assert (await r.json())["error"]["type"] == "service_unavailable"
            async with s.get(url + "/health") as r:
                assert r.status == 200
        for _, w in held:
            w.close()
        seen["fds"] = fds(proc.pid)
        return seen

    with proc:
        soft, hard = nofile(proc.pid)
        assert soft == hard  # raised from the 1,024 it was started with
        seen = asyncio.run(run())
    print(
        f"sim: idle and half-sent connections closed after {seen['closed_after_s']:.2f} s; fds {seen['fds']}"
    )
