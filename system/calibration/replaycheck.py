"""Check the offline replay against the live sim: same profile and closed-loop workload, aiohttp client.

    python -m system.calibration.replaycheck --profile debug --users 1,16,64 --duration 10 --warmup 3 \
        --out results/reference/calibration/replay-vs-live.json
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from system.calibration.replay import ReplayRequest, ReplayResult, simulate_closed_loop
from system.engines.sim.launch import sim_process
from system.engines.sim.profiles import Profile
from system.sse import SSEReader

METRICS = ("ttft_p50_s", "tpot_p50_s", "output_tps")


async def live_closed_loop(
    base: str,
    model: str,
    users: int,
    workload: Sequence[tuple[int, int]],
    duration_s: float,
    warmup_s: float,
    *,
    seed: int = 0,
) -> tuple[ReplayResult, list[float]]:
    """Closed-loop streaming users against a running sim; (result with times relative to the start,
    per-request client overhead samples: (arrival - send) + (end of stream - last token due), seconds).

    Requests are completions with a prompt of exactly p token ids and `ignore_eos`, so the sim computes the
    same (prompt, output) pairs the replay draws (same per-user seeded choice).
    """
    import aiohttp

    t0 = time.time()
    stop_at = t0 + duration_s
    result = ReplayResult(users=users, window_start=warmup_s, window_end=duration_s)
    overheads: list[float] = []
    errors: list[str] = []

    async def one(session: aiohttp.ClientSession, user: int, p: int, o: int) -> None:
        body = {
            "model": model,
            "prompt": [7] * p,
            "max_tokens": o,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        start = time.time()
        reader = SSEReader(start)  # the harness's one SSE reader (system/sse.py), on wall-clock times
        async with session.post(f"{base}/v1/completions", json=body) as r:
            if r.status != 200:
                errors.append(f"HTTP {r.status}: {(await r.read())[:200]!r}")
                return
            async for chunk in r.content.iter_any():
                reader.feed(chunk, time.time())
        end = time.time()
        reader.end(end)
        timing = reader.timing
        if timing is None or not reader.chunk_times or reader.error:
            errors.append(reader.error or "stream without tokens or sim_timing")
            return
        first, last = reader.chunk_times[0], reader.chunk_times[-1]
        n = int(timing["output_tokens"])
        overheads.append((float(timing["arrival_ts"]) - start) + (end - float(timing["last_token_ts"])))
        result.requests.append(
            ReplayRequest(
                user=user,
                start_ts=start - t0,
                end_ts=end - t0,
                ttft_s=first - start,
                e2e_s=end - start,
                tpot_s=(last - first) / (n - 1) if n > 1 else math.nan,  # as the harness measures it
                prompt_tokens=int(timing["prompt_tokens"]),
                output_tokens=n,
                preemptions=int(timing.get("preemptions", 0)),
            )
        )

    async def user(session: aiohttp.ClientSession, u: int) -> None:
        rng = random.Random(f"{seed}-{u}")  # the replay's per-user draw
        while time.time() < stop_at:
            p, o = rng.choice(list(workload))
            await one(session, u, p, o)

    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as session:
        tasks = [asyncio.create_task(user(session, u)) for u in range(users)]
        await asyncio.sleep(max(0.0, stop_at - time.time()))
        for t in tasks:  # requests still open at the end do not count (Locust stops them too)
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if errors:
        raise RuntimeError(f"{len(errors)} live request(s) failed, first: {errors[0]}")
    return result, overheads


def compare_live(
    profile: Profile | str,
    users_list: Sequence[int],
    workload: Sequence[tuple[int, int]],
    *,
    duration_s: float,
    warmup_s: float,
    seed: int = 0,
    log_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """Start a sim with `profile` (a name or a profile object, written to JSON), run each user count live,
    replay the same with the measured median client overhead; one row per user count."""
    from system.engines.sim.profilefiles import resolve_profile, save_profile

    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(profile, Profile):
            arg = str(save_profile(profile, Path(tmp) / "profile.json"))
            prof = profile
        else:
            arg, prof = profile, resolve_profile(profile)
        log = (log_dir or Path(tmp)) / "replaycheck-sim.log"
        proc, base = sim_process(arg, log, "--model-name", "m")
        rows = []
        with proc:
            for users in users_list:
                live, over = asyncio.run(
                    live_closed_loop(base, "m", users, workload, duration_s, warmup_s, seed=seed)
                )
                overhead = statistics.median(over) if over else 0.0
                rep = simulate_closed_loop(
                    prof, users, workload, duration_s, warmup_s, client_overhead_s=overhead, seed=seed
                )
                lv, rp = live.summary(), rep.summary()
                row: dict[str, Any] = {"users": users, "client_overhead_ms": round(overhead * 1e3, 3)}
                for k in (*METRICS, "requests"):
                    row[f"live_{k}"], row[f"replay_{k}"] = lv[k], rp[k]
                for k in METRICS:
                    row[f"err_{k}"] = abs(rp[k] - lv[k]) / lv[k] if lv[k] else math.nan
                rows.append(row)
                time.sleep(0.5)  # let the previous step's aborted requests drain
    return rows


@click.command()
@click.option("--profile", default="debug", show_default=True, help="Profile name or JSON file.")
@click.option("--users", default="1,16,64", show_default=True, help="Comma-separated user counts.")
@click.option("--duration", type=float, default=10.0, show_default=True, help="Seconds per step.")
@click.option("--warmup", type=float, default=3.0, show_default=True, help="Warm-up seconds per step.")
@click.option("--prompt-tokens", default="20,60,120", show_default=True, help="Prompt lengths drawn.")
@click.option("--output-tokens", default="16,32,64", show_default=True, help="Output lengths drawn.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="JSON output.")
def main(
    profile: str,
    users: str,
    duration: float,
    warmup: float,
    prompt_tokens: str,
    output_tokens: str,
    out: Path,
) -> None:
    """Replay vs live sim at a few user counts; prints the relative error of TTFT/TPOT p50 and tokens/s."""
    ps = [int(x) for x in prompt_tokens.split(",")]
    os_ = [int(x) for x in output_tokens.split(",")]
    workload = [(p, o) for p in ps for o in os_]
    rows = compare_live(
        profile, [int(u) for u in users.split(",")], workload, duration_s=duration, warmup_s=warmup
    )
    worst = {k: max(r[f"err_{k}"] for r in rows) for k in METRICS}
    doc = {
        "profile": profile,
        "workload": {"prompt_tokens": ps, "output_tokens": os_},
        "duration_s": duration,
        "warmup_s": warmup,
        "rows": rows,
        "max_rel_error": worst,
    }
    text = json.dumps(doc, indent=2)
    click.echo(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


if __name__ == "__main__":
    main()
