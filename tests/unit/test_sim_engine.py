"""Sim engine in-process: tokens never before their due time, stream-interval wake-ups, abort frees KV."""

from __future__ import annotations

import asyncio
import time

from system.engines.sim.engine import SimEngine
from system.engines.sim.profiles import get_profile
from system.engines.sim.scheduler import SimRequest, State


async def collect(eng: SimEngine, req: SimRequest) -> list[tuple[float, int]]:
    """(wall time, tokens notified) at every wake-up, as a stream handler sees them."""
    seen: list[tuple[float, int]] = []
    sent = 0
    while True:
        if req.notified > sent:
            sent = req.notified
            seen.append((time.time(), sent))
        if req.done and sent >= req.num_output:
            return seen
        await eng.wait(req)


async def test_tokens_are_visible_at_not_before_their_due_time() -> None:
    eng = SimEngine(get_profile("debug"), model_name="d")
    eng.start()
    try:
        req = eng.submit(prompt_tokens=10, target_output=5)
        seen = await collect(eng, req)
    finally:
        await eng.stop()
    assert [n for _, n in seen] == [1, 2, 3, 4, 5]
    assert req.first_token_ts is not None and req.last_token_ts is not None
    assert seen[0][0] >= req.first_token_ts and seen[-1][0] >= req.last_token_ts
    assert seen[0][0] - req.first_token_ts < 0.05
    assert eng.scheduler.used_blocks == 0 and req.state == State.FINISHED


async def test_stream_interval_coalesces_and_non_stream_wakes_once() -> None:
    eng = SimEngine(get_profile("debug"), model_name="d", stream_interval=3)
    eng.start()
    try:
        streamed = eng.submit(prompt_tokens=4, target_output=8)
        whole = eng.submit(prompt_tokens=4, target_output=8, stream=False)
        a, b = await asyncio.gather(collect(eng, streamed), collect(eng, whole))
    finally:
        await eng.stop()
    assert [n for _, n in a] == [1, 4, 7, 8]  # first token at once, then every 3, then the finish
    assert [n for _, n in b] == [8]


async def test_abort_mid_generation_frees_blocks_and_wakes_the_handler() -> None:
    eng = SimEngine(get_profile("debug"), model_name="d")
    eng.start()
    try:
        req = eng.submit(prompt_tokens=100, target_output=1000)
        while req.num_output < 2:
            await eng.wait(req)
        assert eng.scheduler.used_blocks > 0
        waiter = asyncio.ensure_future(eng.wait(req))
        await asyncio.sleep(0)
        eng.abort(req)
        await asyncio.wait_for(waiter, 1.0)
        assert req.state == State.ABORTED and eng.scheduler.used_blocks == 0
        assert not eng.scheduler.running and eng.alive
    finally:
        await eng.stop()
