"""Closed-loop aiohttp streaming client for `bench sim` (run as its own process; prints one JSON line).

Streams are read with the harness's one SSE reader (`system.sse.SSEReader`): tokens are counted per content
chunk as they arrive (the sim's synthetic words are one token each), so window throughput is exact.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import resource
import sys
import time
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from system.sse import SSEReader


def scrape(base: str) -> dict[str, float]:
    """Prometheus samples of the sim as {name or name{le=..}: value} (histogram buckets keyed by le)."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = s.name
            if "le" in s.labels:
                key += "{le=" + s.labels["le"] + "}"
            elif "finished_reason" in s.labels:
                key += "{" + s.labels["finished_reason"] + "}"
            out[key] = s.value
    return out


def histogram_quantile(samples: dict[str, float], name: str, q: float) -> float:
    """Upper bucket edge holding quantile q of a (delta of a) Prometheus histogram; NaN when empty."""
    prefix = name + "_bucket{le="
    buckets = sorted(
        ((float(k[len(prefix) : -1]), v) for k, v in samples.items() if k.startswith(prefix)),
        key=lambda kv: kv[0],
    )
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    target = q * buckets[-1][1]
    for edge, count in buckets:
        if count >= target:
            return edge
    return buckets[-1][0]


def _pcts(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"n": 0, "p50": math.nan, "p99": math.nan, "max": math.nan}
    s = sorted(xs)

    def q(p: float) -> float:
        return s[min(len(s) - 1, int(p * len(s)))]

    return {"n": len(s), "p50": round(q(0.5), 3), "p99": round(q(0.99), 3), "max": round(s[-1], 3)}


async def _run(spec: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    base, n = spec["base"], int(spec["concurrency"])
    t_start = time.time()
    win_start = t_start + float(spec["warmup_s"])
    win_end = win_start + float(spec["duration_s"])
    # output lengths uniform in [M/2, 3M/2] so closed-loop users do not restart in synchronized waves
    m = int(spec["max_tokens"])
    bodies = [
        json.dumps(
            {
                "model": spec["model"],
                "prompt": "Write a long story about a fox who learns to fly over the mountains.",
                "max_tokens": k,
                "ignore_eos": True,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        ).encode()
        for k in range(max(1, m // 2), m + m // 2 + 1)
    ]
    rng = random.Random(int(spec.get("seed", 0)))
    st = {"tokens": 0, "events": 0, "completed": 0, "errors": 0, "open": 0, "open_samples": []}
    first_lag: list[float] = []
    last_lag: list[float] = []

    async def one(session: aiohttp.ClientSession) -> None:
        body = rng.choice(bodies)
        reader = SSEReader(time.time())
        async with session.post(
            f"{base}/v1/completions", data=body, headers={"content-type": "application/json"}
        ) as r:
            if r.status != 200:
                st["errors"] += 1
                await r.read()
                return
            async for chunk in r.content.iter_any():
                t = time.time()
                seen = len(reader.chunk_tokens)
                reader.feed(chunk, t)
                if win_start <= t < win_end and len(reader.chunk_tokens) > seen:
                    st["tokens"] += sum(reader.chunk_tokens[seen:])
                    st["events"] += len(reader.chunk_tokens) - seen
        reader.end(time.time())
        gt = reader.timing
        if gt is None or not reader.chunk_times or reader.error:
            st["errors"] += 1
            return
        first, last = reader.chunk_times[0], reader.chunk_times[-1]
        if win_start <= first < win_end:
            st["completed"] += 1
            first_lag.append(1e3 * (first - gt["first_token_ts"]))
            last_lag.append(1e3 * (last - gt["last_token_ts"]))

    async def user(session: aiohttp.ClientSession, delay: float) -> None:
        await asyncio.sleep(delay)
        while time.time() < win_end:
            st["open"] += 1
            try:
                await one(session)
            except (TimeoutError, aiohttp.ClientError, json.JSONDecodeError):
                st["errors"] += 1
            finally:
                st["open"] -= 1

    async def sampler() -> None:
        while time.time() < win_end:
            await asyncio.sleep(0.25)
            if win_start <= time.time() < win_end:
                st["open_samples"].append(st["open"])

    conn = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    ramp = float(spec.get("ramp_s", 1.0))
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        users = [asyncio.create_task(user(session, ramp * i / n)) for i in range(n)]
        samp = asyncio.create_task(sampler())
        # users start no request after the window end; the open ones finish (their first token may lie in
        # the window and its lag needs the final sim_timing), up to a grace period
        await samp
        _done, pending = await asyncio.wait(users, timeout=float(spec.get("grace_s", 30.0)))
        for u in pending:
            u.cancel()
        await asyncio.gather(*users, return_exceptions=True)
    window = win_end - win_start
    samples = st["open_samples"]
    return {
        "completed": st["completed"],
        "errors": st["errors"],
        "tokens_per_s": round(st["tokens"] / window, 1),
        "events_per_s": round(st["events"] / window, 1),
        "mean_open_streams": round(sum(samples) / len(samples), 1) if samples else 0.0,
        "first_token_lag_ms": _pcts(first_lag),
        "last_token_lag_ms": _pcts(last_lag),
    }


def main() -> None:
    spec = json.loads(sys.argv[1])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        result = uvloop.run(_run(spec))
    except ImportError:
        result = asyncio.run(_run(spec))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
