"""Closed-loop streaming load client (asyncio + aiohttp + uvloop), run as its own process by `bench gateway`.

N users each send a streaming chat request, read it to the end, and send the next one. Per request it keeps
TTFT (send -> first chunk carrying content), E2E and completion tokens (from the final usage event), read
with the harness's one SSE reader (`system.sse.SSEReader`) in its lazy mode: events after the first content
chunk are parsed only at the end of the stream, which keeps the client far from being the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import time
from pathlib import Path
from typing import Any

import aiohttp

from system.sse import SSEReader


async def _user(
    session: aiohttp.ClientSession,
    headers: dict[str, str],
    urls: list[str],
    bodies: list[bytes],
    uid: int,
    start_delay: float,
    stop_at: float,
    out: list[tuple[float, float, float, int, int]],
    errors: dict[str, int],
) -> None:
    await asyncio.sleep(start_delay)
    i = uid
    while time.perf_counter() < stop_at:
        url = urls[i % len(urls)]
        body = bodies[i % len(bodies)]
        i += 1
        t0 = time.perf_counter()
        reader = SSEReader(t0, lazy=True)
        try:
            async with session.post(url, data=body, headers=headers) as resp:
                if resp.status != 200:
                    await resp.read()
                    errors[f"http_{resp.status}"] = errors.get(f"http_{resp.status}", 0) + 1
                    continue
                async for chunk in resp.content.iter_any():
                    reader.feed(chunk, time.perf_counter())
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
            await asyncio.sleep(0.05)  # do not spin on a dead target
            continue
        t1 = time.perf_counter()
        reader.end(t1)
        tokens = reader.usage_tokens
        if not reader.chunk_times or tokens is None or not reader.done or reader.error:
            errors["incomplete"] = errors.get("incomplete", 0) + 1
            continue
        out.append((t0, reader.ttft_s, t1 - t0, tokens, 1))


async def run(
    urls: list[str], bodies: list[bytes], users: int, seconds: float, warmup: float, headers: dict[str, str]
) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    results: list[tuple[float, float, float, int, int]] = []
    errors: dict[str, int] = {}
    t_start = time.perf_counter()
    stop_at = t_start + warmup + seconds
    rng = random.Random(0)
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
        # spread the first requests over the first half of the warm-up so N users do not arrive at once
        ramp = min(warmup / 2, 1.0)
        tasks = [
            asyncio.create_task(
                _user(session, headers, urls, bodies, u, rng.random() * ramp, stop_at, results, errors)
            )
            for u in range(users)
        ]
        await asyncio.gather(*tasks)
    t_end = time.perf_counter()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    window0 = t_start + warmup
    measured = [r for r in results if r[0] >= window0]
    # throughput: tokens of requests that finished inside the measurement window
    done_in_window = [r for r in results if r[0] + r[2] >= window0 and r[0] + r[2] <= stop_at]
    window = stop_at - window0
    return {
        "users": users,
        "seconds": seconds,
        "warmup_s": warmup,
        "ttft_ms": [round(r[1] * 1e3, 4) for r in measured],
        "e2e_ms": [round(r[2] * 1e3, 3) for r in measured],
        "requests": len(measured),
        "requests_total": len(results),  # warm-up included: what the proxy's CPU over the whole run served
        "completed_tokens_per_s": sum(r[3] for r in done_in_window) / window,
        "requests_per_s": len(done_in_window) / window,
        "errors": errors,
        "client_cpu_s": (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime),
        "wall_s": t_end - t_start,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", action="append", required=True, help="full endpoint URL; repeat to alternate")
    ap.add_argument("--bodies", required=True, type=Path, help="JSON list of request bodies (objects)")
    ap.add_argument("--users", type=int, required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--header", action="append", default=[], help="extra request header 'Name: value'")
    args = ap.parse_args(argv)
    headers = {"content-type": "application/json"}
    for h in args.header:
        name, _, value = h.partition(":")
        headers[name.strip()] = value.strip()
    bodies = [json.dumps(b).encode() for b in json.loads(args.bodies.read_text())]
    import uvloop  # ships with uvicorn[standard]

    res = uvloop.run(run(args.url, bodies, args.users, args.seconds, args.warmup, headers))
    args.out.write_text(json.dumps(res))


if __name__ == "__main__":
    main()
