"""Offline closed-loop replay: hand-checked timings, overheads, routed engines, speed; host overheads."""

from __future__ import annotations

import math
import time

import pytest

from system.calibration.replay import simulate_closed_loop
from system.engines.sim.costmodel import BatchShape, decode_step_s, step_cost
from system.engines.sim.profiles import PROFILES, get_profile

DEBUG = get_profile("debug")


def test_one_user_gets_one_step_per_token_and_back_to_back_requests() -> None:
    # prompt 10, 20 output tokens: the prefill step gives token 1, then 19 decode steps (~20 ms each)
    res = simulate_closed_loop(DEBUG, 1, [(10, 20)], duration_s=10.0, warmup_s=1.0)
    s = res.summary()
    step = decode_step_s(DEBUG, 1, 20)
    assert s["ttft_p50_s"] == pytest.approx(DEBUG.step_overhead_s, rel=0.05)
    assert s["tpot_p50_s"] == pytest.approx(step, rel=0.02)
    # each request takes ~20 steps; back to back, so tokens/s is about 1 / step
    assert s["output_tps"] == pytest.approx(1.0 / step, rel=0.08)
    assert all(r.output_tokens == 20 and r.prompt_tokens == 10 for r in res.requests)
    starts = sorted(r.start_ts for r in res.requests)
    ends = sorted(r.end_ts for r in res.requests)
    assert starts[1:] == pytest.approx(ends[:-1])  # closed loop, no think time


def test_client_overhead_adds_to_ttft_not_tpot_and_the_gap_slows_the_loop() -> None:
    base = simulate_closed_loop(DEBUG, 1, [(10, 20)], 10.0, 1.0).summary()
    over = simulate_closed_loop(DEBUG, 1, [(10, 20)], 10.0, 1.0, client_overhead_s=0.05).summary()
    gap = simulate_closed_loop(DEBUG, 1, [(10, 20)], 10.0, 1.0, client_gap_s=0.2).summary()
    assert over["ttft_p50_s"] - base["ttft_p50_s"] == pytest.approx(0.05, abs=1e-6)
    assert over["tpot_p50_s"] == pytest.approx(base["tpot_p50_s"])
    assert over["output_tps"] < base["output_tps"]
    assert gap["ttft_p50_s"] == pytest.approx(base["ttft_p50_s"])
    cycle = 1.0 / base["output_tps"] * 20  # seconds per request
    assert gap["output_tps"] == pytest.approx(20 / (cycle + 0.2), rel=0.1)


def test_jitter_is_seeded_and_bounded() -> None:
    a = simulate_closed_loop(DEBUG, 4, [(10, 20)], 5.0, 1.0, client_overhead_s=0.01, client_jitter=1.0)
    b = simulate_closed_loop(DEBUG, 4, [(10, 20)], 5.0, 1.0, client_overhead_s=0.01, client_jitter=1.0)
    assert [r.ttft_s for r in a.requests] == [r.ttft_s for r in b.requests]
    ttfts = [r.ttft_s for r in a.requests]
    assert max(ttfts) - min(ttfts) > 0.002  # overheads vary between 0 and 2x
    with pytest.raises(ValueError, match="jitter"):
        simulate_closed_loop(DEBUG, 1, [(10, 20)], 5.0, 1.0, client_jitter=2.0)


def test_more_users_batch_together_until_the_step_grows() -> None:
    one = simulate_closed_loop(DEBUG, 1, [(10, 32)], 8.0, 2.0).summary()
    many = simulate_closed_loop(DEBUG, 64, [(10, 32)], 8.0, 2.0).summary()
    # debug steps are overhead-bound: 64 streams decode nearly as fast as one -> ~60x the throughput
    assert many["output_tps"] > 40 * one["output_tps"]
    assert many["tpot_p50_s"] < 1.5 * one["tpot_p50_s"]


def test_routed_engines_split_the_load_by_the_workload_engine_index() -> None:
    wl1 = [(10, 32)]
    single = simulate_closed_loop(DEBUG, 32, wl1, 6.0, 2.0).summary()
    as_list = simulate_closed_loop([DEBUG], 32, [(10, 32, 0)], 6.0, 2.0).summary()
    assert as_list == single  # one engine in a list is the same replay
    # per-sequence-bound engines: two sequences in one batch take twice as long as one
    slow = DEBUG.with_overrides(step_overhead_s=1e-4, per_seq_overhead_s=0.05, name="slow")
    one = simulate_closed_loop(slow, 2, [(10, 8)], 20.0, 2.0).summary()
    two = simulate_closed_loop([slow, slow], 2, [(10, 8, 0), (10, 8, 1)], 20.0, 2.0).summary()
    assert one["tpot_p50_s"] == pytest.approx(0.1, rel=0.05)
    # each user draws its engine at random: mostly one per engine (steps of ~0.05 s), sometimes shared
    assert two["tpot_p50_s"] < 0.08
    assert two["output_tps"] > 1.3 * one["output_tps"]
    with pytest.raises(ValueError, match="engine 2"):
        simulate_closed_loop([DEBUG, DEBUG], 1, [(10, 8, 2)], 5.0, 1.0)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="users"):
        simulate_closed_loop(DEBUG, 0, [(10, 8)], 5.0, 1.0)
    with pytest.raises(ValueError, match="empty"):
        simulate_closed_loop(DEBUG, 1, [], 5.0, 1.0)
    with pytest.raises(ValueError, match="must exceed"):
        simulate_closed_loop(DEBUG, 1, [(10, 8)], 1.0, 1.0)


def test_target_requests_stops_early_and_windows_match() -> None:
    res = simulate_closed_loop(DEBUG, 8, [(10, 16)], 60.0, 1.0, target_requests=50)
    assert res.window_end < 60.0
    win = res.in_window()
    assert 50 <= len(win) <= 58
    assert all(res.window_start <= r.end_ts <= res.window_end for r in win)


def test_256_users_for_30_s_replay_in_well_under_a_few_seconds() -> None:
    t0 = time.perf_counter()
    res = simulate_closed_loop(DEBUG, 256, [(20, 64), (30, 96), (15, 32)], 30.0, 5.0)
    elapsed = time.perf_counter() - t0
    assert res.summary()["requests"] > 2000
    assert elapsed < 3.0, f"replay took {elapsed:.2f} s"


def test_host_overhead_terms_default_to_zero_and_add_linearly() -> None:
    assert all(
        p.per_seq_overhead_s == p.per_token_overhead_s == p.per_request_overhead_s == 0.0
        for n, p in PROFILES.items()
        if not n.startswith("transformers-cb")
    )
    shape = BatchShape(num_tokens=100, num_seqs=10, attn_pairs=1000.0, kv_read_tokens=500, num_new_seqs=2)
    base = step_cost(DEBUG, shape)
    p = DEBUG.with_overrides(per_seq_overhead_s=1e-3, per_token_overhead_s=1e-4, per_request_overhead_s=5e-3)
    cost = step_cost(p, shape)
    assert cost.overhead_s - base.overhead_s == pytest.approx(10 * 1e-3 + 100 * 1e-4 + 2 * 5e-3)
    assert cost.compute_s == base.compute_s and cost.memory_s == base.memory_s


def test_scheduler_reports_newly_admitted_sequences() -> None:
    from system.calibration.replay import scheduler_for
    from system.engines.sim.scheduler import SimRequest

    sched = scheduler_for(DEBUG)
    a, b = SimRequest("a", 10, 5, 0.0), SimRequest("b", 10, 5, 0.0)
    sched.add(a)
    plan = sched.schedule(0.0)
    assert plan is not None and plan.shape.num_new_seqs == 1
    sched.finish_step(plan, 0.02)
    sched.add(b)
    plan = sched.schedule(0.02)
    assert plan is not None and plan.shape.num_seqs == 2 and plan.shape.num_new_seqs == 1
    assert math.isfinite(step_cost(DEBUG, plan.shape).total_s)
