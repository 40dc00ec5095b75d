"""Sim under load: queueing behind max_num_seqs, --stream-interval coalescing, KV preemption end to end."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import aiohttp

from system.engines.sim.launch import sim_process


async def stream(session: aiohttp.ClientSession, base: str, prompt: str, max_tokens: int) -> tuple[int, dict]:
    """Returns (content events, sim_timing) of one streamed completion."""
    body = {"model": "debug", "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
    events = 0
    last: dict = {}
    async with session.post(f"{base}/v1/completions", json=body) as r:
        assert r.status == 200
        async for line in r.content:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            ev = json.loads(line[6:])
            if ev["choices"] and ev["choices"][0]["text"]:
                events += 1
            last = ev
    return events, last["sim_timing"]


def run_streams(base: str, n: int, max_tokens: int) -> list[tuple[int, dict]]:
    async def main() -> list[tuple[int, dict]]:
        async with aiohttp.ClientSession() as s:
            return await asyncio.gather(*[stream(s, base, f"prompt {i}", max_tokens) for i in range(n)])

    return asyncio.run(main())


def test_max_num_seqs_queues_and_stream_interval_coalesces(tmp_path: Path) -> None:
    proc, base = sim_process("debug", tmp_path / "sim.log", "--max-num-seqs", "2", "--stream-interval", "4")
    with proc:
        res = run_streams(base, n=4, max_tokens=9)
    # first token alone, then every 4 tokens (the last event carries the final 4): 1 + 2 events for 9 tokens
    assert [ev for ev, _ in res] == [3, 3, 3, 3]
    gts = sorted((gt for _, gt in res), key=lambda g: g["first_scheduled_ts"])
    assert all(g["output_tokens"] == 9 for g in gts)
    queued = [g["first_scheduled_ts"] - g["arrival_ts"] for g in gts]
    # only 2 sequences at once: the last two waited for the first two to finish (~9 steps)
    assert max(queued[:2]) < 0.05
    assert min(queued[2:]) > 0.1
    # never more than 2 running: at every admission, at most 2 requests are between admission and finish
    for g in gts:
        t = g["first_scheduled_ts"]
        assert sum(1 for h in gts if h["first_scheduled_ts"] <= t < h["last_token_ts"] - 1e-6) <= 2


def test_kv_pressure_preempts_and_recomputes_end_to_end(tmp_path: Path) -> None:
    # 10 blocks x 16 = 160 KV tokens; 3 requests of ~2 + 60 tokens need 3 x 4 blocks -> a preemption
    proc, base = sim_process(
        "debug", tmp_path / "sim.log", "--num-gpu-blocks-override", "10", "--max-model-len", "128"
    )
    with proc:
        res = run_streams(base, n=3, max_tokens=60)
        import urllib.request

        text = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
    gts = [gt for _, gt in res]
    assert all(g["output_tokens"] == 60 for g in gts)
    assert sum(g["preemptions"] for g in gts) >= 1
    line = next(x for x in text.splitlines() if x.startswith("vllm:num_preemptions_total"))
    assert math.isclose(float(line.split()[-1]), sum(g["preemptions"] for g in gts))
