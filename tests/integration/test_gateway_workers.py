"""`expert-router gateway` with `server.workers: 2`: two processes on one port, each with the edge limits."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import psutil
import pytest

from system.processes import free_port
from tests.integration.fakes import fake_upstream
from tests.integration.test_gateway_edge import gateway as gateway_cli
from tests.integration.test_gateway_edge import url_of

pytestmark = pytest.mark.timeout(120)


async def test_two_workers_serve_streams_with_the_edge_limits(tmp_path: Path) -> None:
    port = free_port()
    with fake_upstream(tmp_path, [port]):
        gw = gateway_cli(tmp_path, [port], server={"workers": 2, "upstream_client": "raw"})
        with gw:
            workers = psutil.Process(gw.pid).children(recursive=True)
            assert len([p for p in workers if "python" in p.name()]) >= 2
            url = url_of(gw)
            body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "stream": True}
            async with aiohttp.ClientSession() as s:

                async def one() -> bytes:
                    async with s.post(url + "/v1/chat/completions", json=body) as r:
                        assert r.status == 200
                        return await r.read()

                answers = await asyncio.gather(*(one() for _ in range(8)))
                assert all(a.endswith(b"data: [DONE]\n\n") for a in answers)
                # the edge protocol is each worker's http protocol: an oversized header is refused
                async with s.get(url + "/health", headers={"x-big": "a" * 200_000}) as r:
                    assert r.status == 431
