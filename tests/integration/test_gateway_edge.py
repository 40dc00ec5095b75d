"""The gateway CLI at the edge: fd limits, connection caps, idle/slow clients, huge heads and bodies, JSON
limits, failure semantics (retry only before the request was sent), start-up errors and log levels."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from system.processes import ServerProcess, free_port
from tests.integration.fakes import fake_upstream

pytestmark = pytest.mark.timeout(180)
JSON = {"content-type": "application/json"}


def lower_nofile(soft: int, hard: int | None = None) -> list[str]:
    """A command prefix that starts the server with RLIMIT_NOFILE lowered (like `ulimit -n`)."""
    limit = f"ulimit -Sn {soft}" if hard is None else f"ulimit -n {hard} && ulimit -Sn {soft}"
    return ["sh", "-c", f'{limit} && exec "$@"', "sh"]


def gateway(
    tmp_path: Path,
    ports: Sequence[int],
    *,
    policy: dict[str, Any] | None = None,
    prefix: Sequence[str] = (),
    **sections: Any,
) -> ServerProcess:
    """The gateway CLI (not started) in front of fake upstreams on `ports`."""
    cfg = {
        "policy": policy or {"kind": "round_robin"},
        "experts": [{"name": f"e{i}", "url": f"http://127.0.0.1:{p}"} for i, p in enumerate(ports)],
        **sections,
    }
    path = tmp_path / f"gateway-{free_port()}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    port = free_port()
    cmd = [*prefix, sys.executable, "-m", "system.cli", "gateway", "--config", str(path), "--port", str(port)]
    return ServerProcess(
        cmd,
        name="gateway",
        health_url=f"http://127.0.0.1:{port}/health",
        log_path=tmp_path / f"gateway-{port}.log",
        startup_timeout_s=30,
    )


def url_of(proc: ServerProcess) -> str:
    assert proc.health_url is not None
    return proc.health_url.rsplit("/", 1)[0]


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def nofile(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no fd limit line")


@contextlib.contextmanager
def own_nofile(n: int) -> Iterator[None]:
    """This test process needs one fd per client connection too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, n), hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def chat(text: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": "user", "content": text}], **extra}


async def metric(url: str, name: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.rsplit(" ", 1)[0] == name:  # `name{labels} value`
                return float(line.rsplit(" ", 1)[1])
    return 0.0


async def upstream_total(port: int) -> int:
    return int(await metric(f"http://127.0.0.1:{port}", "fake_requests_total"))


# ---------------------------------------------------------------------------------------------- fds, caps


def test_600_streams_under_a_1024_soft_fd_limit(tmp_path: Path) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"hard fd limit {hard} is too low to show the raise")
    port = free_port()
    streams = 600
    with (
        fake_upstream(tmp_path, [port], ttft_ms=300, itl_ms=150, chunks=12),
        gateway(tmp_path, [port], prefix=lower_nofile(1024)) as gw,
        own_nofile(streams + 200),
    ):
        soft_after, hard_after = nofile(gw.pid)
        assert soft_after == hard_after > 1024  # raised from the 1,024 it was started with
        peak_fds = 0

        async def one(s: aiohttp.ClientSession) -> str:
            async with s.post(url_of(gw) + "/v1/chat/completions", json=chat(stream=True)) as r:
                body = await r.read()
                return "ok" if r.status == 200 and body.endswith(b"data: [DONE]\n\n") else f"{r.status}"

        async def watch(done: asyncio.Event) -> None:
            nonlocal peak_fds
            while not done.is_set():
                peak_fds = max(peak_fds, fds(gw.pid))
                await asyncio.sleep(0.05)

        async def run() -> list[str]:
            done = asyncio.Event()
            watcher = asyncio.create_task(watch(done))
            conn = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as s:
                got = await asyncio.gather(*(one(s) for _ in range(streams)), return_exceptions=True)
            done.set()
            await watcher
            return [g if isinstance(g, str) else repr(g) for g in got]

        results = asyncio.run(run())
    errors = [r for r in results if r != "ok"]
    print(f"600 streams: {len(errors)} errors; gateway peak fds {peak_fds} (soft limit at start 1024)")
    assert errors == []
    assert peak_fds > 1024  # the streams really needed more fds than the limit it was started with


def test_connection_cap_gives_503_with_retry_after_and_health_still_answers(tmp_path: Path) -> None:
    port = free_port()
    limits = {"max_connections": 4, "retry_after_s": 7}
    with fake_upstream(tmp_path, [port]), gateway(tmp_path, [port], limits=limits) as gw:
        host, gw_port = "127.0.0.1", int(url_of(gw).rsplit(":", 1)[1])

        async def run() -> None:
            held = [await asyncio.open_connection(host, gw_port) for _ in range(4)]  # idle, at the cap
            await asyncio.sleep(0.2)
            async with aiohttp.ClientSession() as s:
                async with s.post(url_of(gw) + "/v1/chat/completions", json=chat()) as r:
                    assert r.status == 503 and r.headers["Retry-After"] == "7"
                    err = (await r.json())["error"]
                    assert err["type"] == "service_unavailable" and "4 connections" in err["message"]
                async with s.get(url_of(gw) + "/health") as r:
                    assert r.status == 200 and (await r.json())["status"] == "ok"
            for _, w in held:
                w.close()
            await asyncio.sleep(0.3)
            async with (
                aiohttp.ClientSession() as s,
                s.post(url_of(gw) + "/v1/chat/completions", json=chat()) as r,
            ):
                assert r.status == 200

        asyncio.run(run())


def test_low_hard_fd_limit_lowers_the_cap_instead_of_failing(tmp_path: Path) -> None:
    port = free_port()
    with (
        fake_upstream(tmp_path, [port], ttft_ms=300, itl_ms=100, chunks=8),
        gateway(tmp_path, [port], prefix=lower_nofile(256, 256)) as gw,
    ):
        assert nofile(gw.pid) == (256, 256)

        async def one(s: aiohttp.ClientSession) -> int:
            async with s.post(url_of(gw) + "/v1/chat/completions", json=chat(stream=True)) as r:
                await r.read()
                if r.status == 503:
                    assert r.headers["Retry-After"] == "1" and "error" in json.loads(await r.read())
                return r.status

        async def run() -> tuple[list[int], int]:
            conn = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=conn) as s:
                tasks = [asyncio.create_task(one(s)) for _ in range(100)]
                await asyncio.sleep(0.2)
                async with s.get(url_of(gw) + "/health") as r:
                    health = r.status
                return list(await asyncio.gather(*tasks)), health

        statuses, health = asyncio.run(run())
    log = Path(gw.log_path).read_text()
    print(f"ulimit -n 256: {statuses.count(200)} x 200, {statuses.count(503)} x 503, /health {health}")
    assert "max_connections lowered from 8192" in log
    assert health == 200
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 16 and 503 in statuses
    assert "Too many open files" not in log


# ------------------------------------------------------------------------------------ slow and idle clients


async def _closed_after(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    """Everything the server sent until it closed the connection (or 20 s passed: not closed)."""
    data = b""
    try:
        async with asyncio.timeout(20):
            while chunk := await reader.read(65536):
                data += chunk
    except TimeoutError:
        return data, False
    except ConnectionError:
        pass
    return data, True


def test_idle_slowloris_and_half_sent_bodies_are_closed(tmp_path: Path) -> None:
    port = free_port()
    limits = {"idle_timeout_s": 1, "header_timeout_s": 1.5, "body_timeout_s": 1.5}
    with fake_upstream(tmp_path, [port]), gateway(tmp_path, [port], limits=limits) as gw:
        gw_port = int(url_of(gw).rsplit(":", 1)[1])
        base_fds = fds(gw.pid)
        n = 50

        async def idle() -> tuple[bytes, bool, float]:
            t0 = time.monotonic()
            r, _w = await asyncio.open_connection("127.0.0.1", gw_port)
            data, closed = await _closed_after(r)
            return data, closed, time.monotonic() - t0

        async def slowloris() -> tuple[bytes, bool, float]:
            t0 = time.monotonic()
            r, w = await asyncio.open_connection("127.0.0.1", gw_port)
            w.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")

            async def drip() -> None:
                with contextlib.suppress(ConnectionError):
                    for i in range(100):
                        w.write(b"x-drip-%d: 1\r\n" % i)
                        await w.drain()
                        await asyncio.sleep(0.2)

            dripper = asyncio.create_task(drip())
            data, closed = await _closed_after(r)
            dripper.cancel()
            return data, closed, time.monotonic() - t0

        async def half_body() -> tuple[bytes, bool, float]:
            t0 = time.monotonic()
            r, w = await asyncio.open_connection("127.0.0.1", gw_port)
            w.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                b"content-length: 1000\r\n\r\n" + b'{"model": "auto", '
            )
            data, closed = await _closed_after(r)
            return data, closed, time.monotonic() - t0

        async def split_line() -> tuple[bytes, bool, float]:
            # a request line cut short, then silence: the header timer runs from the read that brought it
            t0 = time.monotonic()
            r, w = await asyncio.open_connection("127.0.0.1", gw_port)
            w.write(b"POST /v1/chat/comp")
            data, closed = await _closed_after(r)
            return data, closed, time.monotonic() - t0

        async def run() -> tuple[list[Any], int]:
            jobs = (
                [idle() for _ in range(n)]
                + [slowloris() for _ in range(n)]
                + [half_body() for _ in range(n)]
                + [split_line() for _ in range(n)]
            )
            tasks = [asyncio.create_task(j) for j in jobs]
            await asyncio.sleep(0.5)
            during = fds(gw.pid)
            return list(await asyncio.gather(*tasks)), during

        results, during = asyncio.run(run())
        time.sleep(0.3)
        after = fds(gw.pid)
    kinds = {
        "idle": results[:n],
        "slowloris": results[n : 2 * n],
        "half body": results[2 * n : 3 * n],
        "split request line": results[3 * n :],
    }
    for kind, rs in kinds.items():
        assert all(closed for _, closed, _ in rs), f"{kind}: not every connection was closed"
        print(f"{kind}: {n} closed after {min(t for *_, t in rs):.2f}-{max(t for *_, t in rs):.2f} s")
    assert all(data == b"" for data, _, _ in kinds["idle"])  # nothing to answer: just closed
    for data, _, _ in kinds["slowloris"] + kinds["half body"] + kinds["split request line"]:
        assert data.startswith(b"HTTP/1.1 408 ") and b'"error"' in data
    # each timer counts from the first bytes of its head or body, not from the connect (idle: 1 s)
    assert min(t for *_, t in kinds["split request line"] + kinds["half body"]) >= 1.4
    print(f"gateway fds: {base_fds} before, {during} with {4 * n} slow clients, {after} after")
    assert during >= base_fds + 4 * n - 5 and after <= base_fds + 2


# -------------------------------------------------------------------------------- heads, bodies, JSON


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_huge_heads_and_bad_bodies_get_4xx_in_the_openai_shape(tmp_path: Path) -> None:
    port = free_port()
    with fake_upstream(tmp_path, [port]), gateway(tmp_path, [port]) as gw:
        url = url_of(gw)
        gw_port = int(url.rsplit(":", 1)[1])

        async def unfinished_head(mb: int) -> bytes:
            r, w = await asyncio.open_connection("127.0.0.1", gw_port)
            w.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-big: ")
            with contextlib.suppress(ConnectionError):
                for _ in range(mb):
                    w.write(b"a" * (1 << 20))
                    await w.drain()
            data, _ = await _closed_after(r)
            return data

        async def run() -> None:
            rss0 = _rss_mb(gw.pid)
            answers = await asyncio.gather(*(unfinished_head(50) for _ in range(10)))
            assert all(a.startswith(b"HTTP/1.1 431 ") for a in answers)
            grew = _rss_mb(gw.pid) - rss0
            print(f"ten unfinished 50 MB headers: 431 each; gateway RSS {rss0:.0f} MB, +{grew:.1f} MB")
            assert grew < 50  # ten 50 MB heads were never buffered
            async with aiohttp.ClientSession() as s:
                big = {"x-request-id": "r" * (4 << 20)}
                with contextlib.suppress(aiohttp.ClientError):  # the server may close while we send
                    async with s.post(url + "/v1/chat/completions", json=chat(), headers=big) as r:
                        assert r.status == 431 and "error" in await r.json()
                many = {f"x-h{i}": "1" for i in range(150)}
                async with s.post(url + "/v1/chat/completions", json=chat(), headers=many) as r:
                    assert r.status == 431
                assert await upstream_total(port) == 0  # nothing of it reached the expert
                cases = [
                    (b"[" * 100_000 + b"]" * 100_000, JSON, 400, "nested deeper"),
                    (b'{"model": "auto", "max_tokens": ' + b"7" * 5000 + b"}", JSON, 400, "digits"),
                    (json.dumps(chat()).encode(), {"content-type": "text/plain"}, 415, "Content-Type"),
                    (
                        b"model=auto",
                        {"content-type": "application/x-www-form-urlencoded"},
                        415,
                        "Content-Type",
                    ),
                ]
                for data, headers, status, fragment in cases:
                    async with s.post(url + "/v1/chat/completions", data=data, headers=headers) as r:
                        err = (await r.json())["error"]
                        assert (r.status, err["code"]) == (status, status) and fragment in err["message"]
                async with s.post(url + "/v1/chat/completions", json=chat(max_tokens=2)) as r:
                    assert r.status == 200  # and it keeps serving

        asyncio.run(run())


# ------------------------------------------------------------------------------------- failure semantics


def test_expert_lost_after_the_request_is_502_routed_or_pinned_and_never_retried(tmp_path: Path) -> None:
    lost, good = free_port(), free_port()
    breaker = {"failure_threshold": 100, "open_s": 60}
    health = {"interval_s": 60}
    with (
        fake_upstream(tmp_path, [lost], "--drop-after-request") as lost_proc,
        fake_upstream(tmp_path, [good]),
        gateway(tmp_path, [lost, good], breaker=breaker, health=health) as gw,
    ):
        url = url_of(gw)

        async def run() -> None:
            async with aiohttp.ClientSession() as s:
                # round robin: the 1st and 3rd routed requests go to e0, which reads them and is lost
                for i, (model, stream) in enumerate(
                    [("auto", False), ("auto", True), ("auto", True), ("e0", False), ("e0", True)]
                ):
                    body = {**chat(max_tokens=3), "model": model, "stream": stream}
                    async with s.post(url + "/v1/chat/completions", json=body) as r:
                        expert = r.headers["x-router-expert"]
                        if model == "auto" and i == 1:
                            assert r.status == 200 and expert == "e1"  # round robin's turn
                            continue
                        err = (await r.json())["error"]
                        assert r.status == 502 and expert == "e0", (i, r.status)
                        assert "after the request was sent" in err["message"]
                assert await upstream_total(lost) == 4  # each was received once ...
                assert await upstream_total(good) == 1  # ... and never run again elsewhere
                assert await metric(url, "router_retries_total") == 0
                lost_proc.kill()
                # a connect error: the expert cannot have started anything, so routed requests retry
                for _ in range(2):
                    async with s.post(url + "/v1/chat/completions", json=chat(max_tokens=2)) as r:
                        assert r.status == 200 and r.headers["x-router-expert"] == "e1"
                assert await metric(url, "router_retries_total") == 1
                async with s.post(url + "/v1/chat/completions", json={**chat(), "model": "e0"}) as r:
                    assert r.status == 503  # pinned: not re-routed
                    assert "unreachable" in (await r.json())["error"]["message"]

        asyncio.run(run())


def test_broken_stream_is_a_metric_and_an_info_line_not_an_error(tmp_path: Path) -> None:
    port = free_port()
    with (
        fake_upstream(tmp_path, [port], "--abort-after-tokens", "3", ttft_ms=10, itl_ms=20, chunks=20),
        gateway(tmp_path, [port]) as gw,
    ):

        async def run() -> bytes:
            async with (
                aiohttp.ClientSession() as s,
                s.post(url_of(gw) + "/v1/chat/completions", json=chat(stream=True)) as r,
            ):
                assert r.status == 200
                with pytest.raises(aiohttp.ClientPayloadError):  # no terminating chunk: visibly cut
                    await r.read()
                return r.content._buffer[-1] if r.content._buffer else b""

        asyncio.run(run())
        n = asyncio.run(metric(url_of(gw), 'router_streams_cut_total{expert="e0",reason="broken"}'))
        log = Path(gw.log_path).read_text()
    assert n == 1
    assert "INFO expert_router.gateway: stream cut (broken): expert e0 broke off the stream" in log
    assert " ERROR " not in log and "Traceback" not in log


def test_missing_or_tampered_classifier_is_one_line_and_exit_2(tmp_path: Path) -> None:
    import subprocess

    from system.classifier import PromptClassifier

    texts = [f"python code bug {i}" for i in range(8)] + [f"soup recipe dinner {i}" for i in range(8)]
    good = tmp_path / "clf"
    PromptClassifier.train(texts, 2, svd_components=None, seed=0).save(good)
    model = good / "model.skops"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    for clf, fragment in [
        (good, "does not match the sha256"),
        (tmp_path / "nowhere", "classifier directory not found"),
    ]:
        cfg = {
            "policy": {"kind": "cluster"},
            "classifier": str(clf),
            "experts": [{"name": "a", "url": "http://h:1"}],
        }
        path = tmp_path / "gw.yaml"
        path.write_text(yaml.safe_dump(cfg))
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "system.cli",
                "gateway",
                "--config",
                str(path),
                "--port",
                str(free_port()),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 2
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], res.stderr
