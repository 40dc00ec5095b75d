"""Gateway against fake upstream processes: routing, headers, errors, limits, faults, disconnects, admin."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from system.gateway.config import CLASSIFYING_POLICIES, GatewayConfig
from system.processes import ServerProcess, free_port
from tests.integration.fakes import KeywordClassifier, fake_upstream, gateway_in_process

pytestmark = pytest.mark.timeout(60)


def make_cfg(ports: list[int], policy: dict[str, Any] | None = None, **sections: Any) -> GatewayConfig:
    experts = [{"name": f"e{i}", "url": f"http://127.0.0.1:{p}"} for i, p in enumerate(ports)]
    policy = policy or {"kind": "cluster"}
    data = {"policy": policy, "experts": experts, **sections}
    if policy["kind"] in CLASSIFYING_POLICIES:
        data["classifier"] = "unused"  # the tests inject the classifier object
    return GatewayConfig.model_validate(data)


@contextlib.contextmanager
def upstreams(tmp_path: Path, n: int = 2, **kw: Any) -> Iterator[tuple[list[int], list[ServerProcess]]]:
    """`n` fake upstream processes, one port each (so one can be killed alone)."""
    ports = [free_port() for _ in range(n)]
    procs = [fake_upstream(tmp_path, [p], **kw) for p in ports]
    try:
        for p in procs:
            p.start()
        yield ports, procs
    finally:
        for p in procs:
            p.stop()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    with upstreams(tmp_path_factory.mktemp("fake")) as (ports, _):
        yield ports


JSON = {"content-type": "application/json"}


def chat(text: str, model: str = "auto", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


async def upstream_running(port: int) -> int:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    line = next(ln for ln in text.splitlines() if ln.startswith("vllm:num_requests_running"))
    return int(float(line.rsplit(" ", 1)[1]))


async def wait_running_zero(ports: list[int], within_s: float) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < within_s:
        if all([await upstream_running(p) == 0 for p in ports]):
            return time.perf_counter() - t0
        await asyncio.sleep(0.02)
    raise AssertionError(f"upstream still running requests after {within_s}s")


async def test_openai_client_routes_by_classifier(shared: list[int]) -> None:
    clf = KeywordClassifier()
    async with gateway_in_process(make_cfg(shared), clf) as url:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        raw = await client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "say hello"}], max_tokens=4
        )
        assert raw.headers["x-router-expert"] == "e0"
        assert raw.headers["x-router-cluster"] == "0"
        assert raw.headers["x-router-policy"] == "cluster"
        assert float(raw.headers["x-router-overhead-ms"]) >= 0
        completion = raw.parse()
        assert completion.choices[0].message.content
        assert completion.model_extra["sim_timing"]["output_tokens"] == 4

        async with client.chat.completions.with_streaming_response.create(
            model="auto",
            messages=[{"role": "user", "content": "review my code"}],
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        ) as resp:
            assert resp.headers["x-router-expert"] == "e1"
            assert resp.headers["x-router-cluster"] == "1"
            assert resp.headers["content-type"].startswith("text/event-stream")
            chunks = [c async for c in await resp.parse()]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert len(text.split()) == 6
        assert chunks[-1].usage.completion_tokens == 6
        assert chunks[-1].model_extra["sim_timing"]["output_tokens"] == 6  # relayed unchanged

        legacy = await client.completions.create(model="auto", prompt="code golf", max_tokens=3)
        assert legacy.choices[0].text
        assert clf.calls == 3


async def test_explicit_expert_goes_direct_and_model_rewrite(shared: list[int]) -> None:
    clf = KeywordClassifier()
    cfg = make_cfg(shared)
    cfg.experts[1].model = "served-one"
    async with gateway_in_process(cfg, clf) as url, aiohttp.ClientSession() as s:
        async with s.post(url + "/v1/chat/completions", json=chat("hello", model="e1", max_tokens=2)) as r:
            body = await r.json()
            assert (r.headers["x-router-expert"], r.headers["x-router-policy"]) == ("e1", "direct")
            assert r.headers["x-router-cluster"] == "-1"
        assert body["model"] == "served-one"  # rewritten: the config names e1's served model
        assert clf.calls == 0  # an explicit expert is never classified
        async with s.post(
            url + "/v1/chat/completions", json=chat("hello", model="served-one", max_tokens=2)
        ) as r:
            assert r.headers["x-router-expert"] == "e1"  # the served name addresses the expert too
        async with s.post(url + "/v1/chat/completions", json=chat("hello", max_tokens=2)) as r:
            assert r.headers["x-router-expert"] == "e0"
            assert (await r.json())["model"] == "fake-model"  # discovered from e0's /v1/models
        async with s.post(
            url + "/v1/chat/completions", json=chat("hi", model="fake-model", max_tokens=2)
        ) as r:
            assert r.headers["x-router-expert"] == "e0"  # first expert serving that name
        async with s.get(url + "/v1/models") as r:
            assert [m["id"] for m in (await r.json())["data"]] == ["auto", "e0", "e1"]


@pytest.mark.parametrize(
    ("data", "status", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', 400, "`model` is required"),
        (b'{"model": "auto", "messages": "x"}', 400, "messages"),
        (b'{"model": "gpt-9", "messages": []}', 404, "not found"),
        (b'{"model": "auto", "pad": "' + b"x" * 5000 + b'"}', 413, "exceeds the limit"),
    ],
)
async def test_bad_requests_get_openai_errors(
    shared: list[int], data: bytes, status: int, fragment: str
) -> None:
    cfg = make_cfg(shared, limits={"max_body_bytes": 4096})
    async with gateway_in_process(cfg, KeywordClassifier()) as url, aiohttp.ClientSession() as s:
        async with s.post(url + "/v1/chat/completions", data=data, headers=JSON) as r:
            assert r.status == status
            err = (await r.json())["error"]
            assert fragment in err["message"] and err["code"] == status and "type" in err

        # chunked upload without content-length is capped too
        async def gen() -> Any:
            for _ in range(10):
                yield b"x" * 1000

        async with s.post(url + "/v1/chat/completions", data=gen(), headers=JSON) as r:
            assert r.status == 413
        async with s.get(url + "/v1/nothing") as r:
            assert r.status == 404 and "error" in await r.json()
        async with s.post(url + "/v1/chat/completions", json=chat("still up", max_tokens=2)) as r:
            assert r.status == 200


async def test_max_in_flight_gives_503_with_retry_after(shared: list[int]) -> None:
    cfg = make_cfg(shared, limits={"max_in_flight": 1, "retry_after_s": 3})
    async with gateway_in_process(cfg, KeywordClassifier()) as url, aiohttp.ClientSession() as s:
        slow = asyncio.create_task(s.post(url + "/v1/chat/completions", json=chat("slow", max_tokens=40)))
        await asyncio.sleep(0.1)
        async with s.post(url + "/v1/chat/completions", json=chat("second", max_tokens=1)) as r:
            assert r.status == 503
            assert r.headers["Retry-After"] == "3"
            assert (await r.json())["error"]["type"] == "service_unavailable"
        async with s.get(url + "/health") as r:
            assert r.status == 200 and (await r.json())["in_flight"] == 1  # still answered
        first = await slow
        assert first.status == 200
        first.release()
        async with s.post(url + "/v1/chat/completions", json=chat("third", max_tokens=1)) as r:
            assert r.status == 200


async def test_upstream_timeout_gives_504(shared: list[int]) -> None:
    cfg = make_cfg(shared, limits={"read_timeout_s": 0.2})
    async with gateway_in_process(cfg, KeywordClassifier()) as url, aiohttp.ClientSession() as s:
        # non-stream answer of 100 tokens at 5 ms each: silent for 0.5 s
        async with s.post(url + "/v1/chat/completions", json=chat("wait", max_tokens=100)) as r:
            assert r.status == 504
            assert (await r.json())["error"]["type"] == "timeout_error"
        async with s.get(url + "/metrics") as r:
            assert 'router_upstream_errors_total{expert="e0",reason="timeout"} 1.0' in await r.text()


async def test_expert_down_at_start(shared: list[int]) -> None:
    dead = free_port()
    async with (
        gateway_in_process(make_cfg([dead, shared[1]], {"kind": "single"})) as url,
        aiohttp.ClientSession() as s,
    ):
        async with s.post(url + "/v1/chat/completions", json=chat("hi", max_tokens=1)) as r:
            assert r.status == 503
            assert (await r.json())["error"]["type"] == "service_unavailable"
        async with s.get(url + "/health") as r:
            health = await r.json()
            assert r.status == 200 and health["status"] == "ok"  # e1 is still there
            assert health["experts"]["e0"]["healthy"] is False
    cfg = make_cfg([dead, shared[1]])
    async with gateway_in_process(cfg, KeywordClassifier()) as url, aiohttp.ClientSession() as s:
        for text in ("hello", "code"):  # cluster 0 belongs to the dead e0: next-nearest takes it
            async with s.post(url + "/v1/chat/completions", json=chat(text, max_tokens=1)) as r:
                assert r.status == 200 and r.headers["x-router-expert"] == "e1"


async def test_connect_failure_is_retried_on_next_expert(tmp_path: Path) -> None:
    with upstreams(tmp_path) as (ports, procs):
        cfg = make_cfg(ports, health={"interval_s": 60}, breaker={"failure_threshold": 1, "open_s": 60})
        async with gateway_in_process(cfg, KeywordClassifier()) as url, aiohttp.ClientSession() as s:
            procs[0].kill()  # health checks will not notice for a minute: the request path must
            async with s.post(url + "/v1/chat/completions", json=chat("hello", max_tokens=2)) as r:
                assert r.status == 200
                assert r.headers["x-router-expert"] == "e1" and r.headers["x-router-cluster"] == "0"
            async with s.get(url + "/metrics") as r:
                m = await r.text()
            assert "router_retries_total 1.0" in m
            assert 'router_breaker_open{expert="e0"} 1.0' in m
            # breaker open: the next request skips e0 without a failed connect
            async with s.post(url + "/v1/chat/completions", json=chat("hello", max_tokens=2)) as r:
                assert r.headers["x-router-expert"] == "e1"
            async with s.get(url + "/metrics") as r:
                assert "router_retries_total 1.0" in await r.text()
            # an explicit request for the dead expert is not silently re-routed
            async with s.post(url + "/v1/chat/completions", json=chat("x", model="e0")) as r:
                assert r.status == 503


async def test_expert_killed_mid_stream(tmp_path: Path) -> None:
    with upstreams(tmp_path, ttft_ms=10, itl_ms=50, chunks=60) as (ports, procs):
        async with gateway_in_process(make_cfg(ports), KeywordClassifier()) as url:
            client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
            stream = await client.chat.completions.create(
                model="auto", messages=[{"role": "user", "content": "hello"}], stream=True
            )
            got = 0
            with pytest.raises(openai.APIError, match="expert e0 broke off the stream"):
                async for _ in stream:
                    got += 1
                    if got == 3:
                        procs[0].kill()
            assert got >= 3
            # the gateway keeps serving, and routes around the dead expert
            ok = await client.chat.completions.create(
                model="auto", messages=[{"role": "user", "content": "hello"}], max_tokens=2
            )
            assert ok.choices[0].message.content


async def test_client_disconnect_cancels_upstream_stream_and_non_stream(tmp_path: Path) -> None:
    with upstreams(tmp_path, ttft_ms=10, itl_ms=50, chunks=100) as (ports, _):
        async with gateway_in_process(make_cfg(ports), KeywordClassifier()) as url:
            async with aiohttp.ClientSession() as s:
                resp = await s.post(url + "/v1/chat/completions", json=chat("hello", stream=True))
                await resp.content.readany()
                assert await upstream_running(ports[0]) == 1
                resp.close()  # drop the connection mid-stream
                assert await wait_running_zero(ports, 1.0) < 1.0

                task = asyncio.create_task(s.post(url + "/v1/chat/completions", json=chat("hello")))
                await asyncio.sleep(0.3)
                assert await upstream_running(ports[0]) == 1
                task.cancel()  # non-stream: nothing was sent back yet, the gateway must still notice
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                assert await wait_running_zero(ports, 1.0) < 1.0
            async with aiohttp.ClientSession() as s, s.get(url + "/health") as r:
                health = await r.json()
            assert health["in_flight"] == 0
            assert health["upstream_connections"]["in_use"] == 0  # nothing leaked
            assert all(e["outstanding"] == 0 for e in health["experts"].values())


async def test_admin_endpoints(shared: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    async with (
        gateway_in_process(make_cfg(shared), KeywordClassifier()) as url,
        aiohttp.ClientSession() as s,
        s.post(url + "/admin/policy", data=b"{not json", headers=JSON) as r,
    ):
        # the token is checked before the body is read: 403 (admin off), not 400
        assert r.status == 403 and "EXPERT_ROUTER_ADMIN_TOKEN" in (await r.json())["error"]["message"]
    monkeypatch.setenv("EXPERT_ROUTER_ADMIN_TOKEN", "s3cret")
    loads: list[Path] = []

    def loader(path: Path) -> KeywordClassifier:
        loads.append(path)
        return KeywordClassifier()

    async with gateway_in_process(make_cfg(shared), loader=loader) as url, aiohttp.ClientSession() as s:
        auth = {"Authorization": "Bearer s3cret"}
        async with s.post(
            url + "/admin/policy", json={"kind": "round_robin"}, headers={"Authorization": "Bearer x"}
        ) as r:
            assert r.status == 401
        for bad_body in (b"{not json", b"[" * 50_000, b'{"kind": 1' + b"0" * 5000 + b"}"):
            for headers in ({}, {"Authorization": "Bearer x"}):  # no token, wrong token: 401 first
                async with s.post(url + "/admin/policy", data=bad_body, headers={**JSON, **headers}) as r:
                    assert r.status == 401 and (await r.json())["error"]["type"] == "authentication_error"
            async with s.post(url + "/admin/policy", data=bad_body, headers={**JSON, **auth}) as r:
                assert r.status == 400 and (await r.json())["error"]["code"] == 400
        async with s.post(url + "/admin/policy", data=b"kind=single", headers=auth) as r:
            assert r.status == 415
        async with s.post(url + "/admin/reload-classifier", json={"path": 3, "x": 1}, headers=auth) as r:
            assert r.status == 400 and "invalid request" in (await r.json())["error"]["message"]
        async with s.post(url + "/admin/policy", json={"kind": "teleport"}, headers=auth) as r:
            assert r.status == 400
        async with s.post(url + "/admin/policy", json={"kind": "single", "expert": "e1"}, headers=auth) as r:
            assert r.status == 200
        async with s.post(url + "/v1/chat/completions", json=chat("hello", max_tokens=1)) as r:
            assert (r.headers["x-router-policy"], r.headers["x-router-expert"]) == ("single", "e1")
        async with s.post(url + "/admin/reload-classifier", json={"path": "/no/such/dir"}, headers=auth) as r:
            assert r.status == 400 and "not found" in (await r.json())["error"]["message"]
        async with s.post(
            url + "/admin/reload-classifier", json={"path": str(Path.cwd())}, headers=auth
        ) as r:
            assert r.status == 200 and (await r.json())["k"] == 2
    assert loads == [Path("unused"), Path.cwd()]  # configured path at start, then the reload


async def test_metrics_exposed(shared: list[int]) -> None:
    async with gateway_in_process(make_cfg(shared), KeywordClassifier()) as url, aiohttp.ClientSession() as s:
        async with s.post(url + "/v1/chat/completions", json=chat("hi", max_tokens=1)) as r:
            assert r.status == 200
        async with s.get(url + "/metrics") as r:
            m = await r.text()
    assert 'router_requests_total{expert="e0",policy="cluster",status="200"} 1.0' in m
    assert "router_decision_seconds_count 1.0" in m
    assert 'router_in_flight{expert="e1"} 0.0' in m
    assert "router_overhead_seconds_bucket" in m


def test_fake_events_are_valid_json(shared: list[int]) -> None:
    # the fake stands in for the sim in these tests: its stream must parse like the sim's
    import urllib.request

    req = urllib.request.Request(
        f"http://127.0.0.1:{shared[0]}/v1/chat/completions",
        data=json.dumps(
            chat("x", stream=True, max_tokens=3, stream_options={"include_usage": True})
        ).encode(),
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        events = [ln[6:] for ln in r.read().decode().splitlines() if ln.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["usage"]["completion_tokens"] == 3


async def _stream_hi(url: str) -> Any:
    """An OpenAI SDK stream of a one-word chat through the gateway at `url`."""
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    return await client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "hi"}], stream=True
    )


async def test_silent_stream_is_cut_with_in_band_504(tmp_path: Path) -> None:
    with upstreams(tmp_path, n=1, ttft_ms=10, itl_ms=600, chunks=5) as (ports, _):
        cfg = make_cfg(ports, limits={"read_timeout_s": 0.2})
        async with gateway_in_process(cfg, KeywordClassifier()) as url:
            stream = await _stream_hi(url)
            got = 0
            with pytest.raises(openai.APIError, match="read timeout"):
                async for _ in stream:
                    got += 1
            assert got == 1  # the first token came, then 600 ms of silence
            assert await wait_running_zero(ports, 1.0) < 1.0  # and the upstream request was dropped


async def test_a_steady_stream_longer_than_the_read_timeout_is_not_cut(tmp_path: Path) -> None:
    # each piped read counts as progress: 10 tokens 100 ms apart (1 s in all) under a 0.3 s read timeout
    with upstreams(tmp_path, n=1, ttft_ms=10, itl_ms=100, chunks=10) as (ports, _):
        cfg = make_cfg(ports, limits={"read_timeout_s": 0.3})
        async with gateway_in_process(cfg, KeywordClassifier()) as url:
            stream = await _stream_hi(url)
            t0 = time.monotonic()
            got = [c async for c in stream]
            assert time.monotonic() - t0 > 0.6  # it did outlast the timeout
            assert sum(1 for c in got if c.choices and c.choices[0].delta.content) == 10


async def test_fastapi_lane_behaves_like_the_fast_path(
    shared: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the completion endpoints are also ordinary FastAPI routes (used when the direct lane is off)
    monkeypatch.setenv("EXPERT_ROUTER_GATEWAY_FASTPATH", "0")
    async with gateway_in_process(make_cfg(shared), KeywordClassifier()) as url, aiohttp.ClientSession() as s:
        async with s.post(url + "/v1/chat/completions", json=chat("code", stream=True, max_tokens=3)) as r:
            assert r.status == 200 and r.headers["x-router-expert"] == "e1"
            assert (await r.read()).endswith(b"data: [DONE]\n\n")
        async with s.post(url + "/v1/completions", data=b"[]", headers=JSON) as r:
            assert r.status == 400 and "JSON object" in (await r.json())["error"]["message"]
