"""Sim scheduler on a virtual clock: batch limits, chunked prefill, FCFS, preemption + recompute, abort."""

from __future__ import annotations

import pytest

from system.engines.sim.costmodel import step_time_s
from system.engines.sim.profiles import get_profile
from system.engines.sim.scheduler import Scheduler, SchedulerConfig, SimRequest, State


def make(max_num_seqs: int = 8, budget: int = 64, num_blocks: int = 1000, block_size: int = 16) -> Scheduler:
    return Scheduler(SchedulerConfig(max_num_seqs, budget, num_blocks, block_size))


def req(i: int, prompt: int = 10, out: int = 5, arrival: float = 0.0) -> SimRequest:
    return SimRequest(f"r{i}", prompt, out, arrival)


def run(
    s: Scheduler, t0: float = 0.0, dt: float = 1.0, max_steps: int = 10_000
) -> list[list[tuple[str, int]]]:
    """Drive steps of fixed length `dt` until idle; returns the (rid, tokens) of every step."""
    log = []
    t = t0
    for _ in range(max_steps):
        plan = s.schedule(t)
        if plan is None:
            break
        log.append([(r.rid, n) for r, n in plan.entries])
        t += dt
        s.finish_step(plan, t)
    assert not s.has_work(), "scheduler did not drain"
    return log


def test_max_num_seqs_limits_the_batch_and_waiting_is_fcfs() -> None:
    s = make(max_num_seqs=2)
    reqs = [req(i, prompt=4, out=3) for i in range(5)]
    for r in reqs:
        s.add(r)
    plan = s.schedule(0.0)
    assert plan is not None
    assert [r.rid for r, _ in plan.entries] == ["r0", "r1"]
    assert [r.rid for r in s.waiting] == ["r2", "r3", "r4"]
    log = run(s)
    # every step holds at most 2 sequences; admission order is arrival order
    assert all(len(step) <= 2 for step in log)
    firsts = [r.first_scheduled_ts for r in reqs]
    assert firsts == sorted(firsts)
    assert all(r.num_output == 3 and r.state == State.FINISHED for r in reqs)
    assert s.free_blocks == 1000


def test_token_budget_chunks_a_long_prefill_and_first_token_comes_after_the_last_chunk() -> None:
    s = make(budget=100)
    r = req(0, prompt=250, out=2)
    s.add(r)
    log = run(s)
    assert log[0] == [("r0", 100)]
    assert log[1] == [("r0", 100)]
    assert log[2] == [("r0", 50)]  # last chunk
    assert log[3] == [("r0", 1)]  # decode
    assert r.first_token_ts == 3.0  # end of the third step, not before
    assert r.last_token_ts == 4.0


def test_running_decodes_go_first_and_a_new_prefill_gets_the_remaining_budget() -> None:
    s = make(budget=20)
    a = req(0, prompt=5, out=10)
    s.add(a)
    run_one = s.schedule(0.0)
    assert run_one is not None
    s.finish_step(run_one, 1.0)  # a's prefill done, first token out
    b = req(1, prompt=50, out=1, arrival=0.5)
    s.add(b)
    plan = s.schedule(1.0)
    assert plan is not None
    assert [(x.rid, n) for x, n in plan.entries] == [("r0", 1), ("r1", 19)]
    assert plan.shape.num_tokens == 20
    assert plan.num_decode_tokens == 1 and plan.num_prefill_tokens == 19


def test_requests_arriving_after_the_step_start_wait_for_the_next_step() -> None:
    s = make()
    s.add(req(0, arrival=5.0))
    assert s.schedule(4.9) is None
    assert s.schedule(5.0) is not None


def test_head_of_line_blocks_when_kv_is_short_no_skipping() -> None:
    s = make(num_blocks=4, block_size=16)  # 64 tokens of KV
    big = req(0, prompt=60, out=2)
    small = req(1, prompt=4, out=2)
    s.add(big)
    s.add(small)
    plan = s.schedule(0.0)
    assert plan is not None
    assert [r.rid for r, _ in plan.entries] == ["r0"]  # 60 tokens -> 4 blocks: nothing left for r1
    assert s.free_blocks == 0
    run(s, t0=1.0)
    assert small.first_scheduled_ts is not None and big.first_scheduled_ts is not None
    assert small.first_scheduled_ts > big.first_scheduled_ts


def test_kv_exhaustion_preempts_the_newest_running_request_and_recomputes_it() -> None:
    # 6 blocks of 4 tokens = 24 tokens; two requests of 4 prompt + 10 output cache up to 13 tokens each
    # (the last sampled token is never fed back) = 4 blocks each -> 8 > 6
    s = make(max_num_seqs=4, budget=64, num_blocks=6, block_size=4)
    old, new = req(0, prompt=4, out=10), req(1, prompt=4, out=10)
    s.add(old)
    s.add(new)
    steps = run(s)
    assert new.preemptions >= 1, "the newest request must be the victim"
    assert old.preemptions == 0
    assert s.num_preemptions == new.preemptions
    # after preemption the victim recomputes prompt + already generated tokens in one prefill
    recompute = [n for step in steps for rid, n in step if rid == "r1" and n > 1]
    assert len(recompute) == 1 + new.preemptions
    assert max(recompute[1:]) > 4  # more than the bare prompt: its output tokens are recomputed too
    assert old.num_output == 10 and new.num_output == 10
    assert s.free_blocks == 6 and s.used_blocks == 0


def test_abort_frees_blocks_and_an_aborted_request_is_skipped_by_the_step_in_flight() -> None:
    s = make(budget=100)
    a, b = req(0, prompt=40, out=50), req(1, prompt=40, out=50)
    s.add(a)
    s.add(b)
    plan = s.schedule(0.0)
    assert plan is not None and s.used_blocks == 6  # ceil(40/16) = 3 blocks each
    assert s.abort(a) is True
    assert s.used_blocks == 3
    s.finish_step(plan, 1.0)  # a's share of the in-flight step is dropped
    assert a.num_output == 0 and a.state == State.ABORTED
    assert b.num_output == 1
    assert s.abort(a) is False  # idempotent
    waiting = req(2)
    s.add(waiting)
    assert s.abort(waiting) is True and not s.waiting
    run(s, t0=1.0)
    assert s.free_blocks == 1000


def test_a_request_that_can_never_fit_is_refused() -> None:
    s = make(num_blocks=2, block_size=16)
    with pytest.raises(ValueError):
        s.add(req(0, prompt=30, out=10))


def test_batching_beats_serial_time_and_step_time_grows_with_load() -> None:
    """Continuous batching on the debug profile: 8 concurrent requests finish far sooner than 8 in a row."""
    p = get_profile("debug")
    s = make(max_num_seqs=p.max_num_seqs, budget=p.max_num_batched_tokens, num_blocks=p.num_blocks)
    reqs = [req(i, prompt=100, out=20) for i in range(8)]
    for r in reqs:
        s.add(r)
    t = 0.0
    durations = []
    while (plan := s.schedule(t)) is not None:
        d = step_time_s(p, plan.shape)
        durations.append((plan.shape.num_tokens, d))
        t += d
        s.finish_step(plan, t)
    serial = 8 * (20 * p.step_overhead_s)
    assert t < serial / 4
    # the prefill step (800 tokens) is longer than a decode step (8 tokens)
    assert durations[0][0] == 800 and durations[1][0] == 8
    assert durations[0][1] > durations[1][1]
