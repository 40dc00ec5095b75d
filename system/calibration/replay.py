"""Offline closed-loop replay: the real Scheduler + cost model on a virtual clock, N users, no sockets."""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from system.engines.sim.costmodel import step_time_s
from system.engines.sim.profiles import Profile
from system.engines.sim.scheduler import Scheduler, SchedulerConfig, SimRequest, StepPlan


@dataclass(frozen=True)
class ReplayRequest:
    """One finished request as the client saw it (client times include the fixed client overhead)."""

    user: int
    start_ts: float  # client sent it
    end_ts: float  # client got the last token
    ttft_s: float
    e2e_s: float
    tpot_s: float  # NaN for a single output token
    prompt_tokens: int
    output_tokens: int
    preemptions: int


@dataclass
class ReplayResult:
    """Requests of one closed-loop step and its summary over the measurement window."""

    users: int
    window_start: float
    window_end: float
    requests: list[ReplayRequest] = field(default_factory=list)
    steps: int = 0
    busy_s: float = 0.0
    window_tokens: int = 0  # tokens due inside the window (whatever request they belong to)

    @property
    def window_s(self) -> float:
        return self.window_end - self.window_start

    def in_window(self) -> list[ReplayRequest]:
        """Requests that ended inside [window_start, window_end] (the analysis' definition)."""
        return [r for r in self.requests if self.window_start <= r.end_ts <= self.window_end]

    def summary(self) -> dict[str, float]:
        """ttft/tpot/e2e p50 (s) and output tokens/s over the window, as analysis.metrics computes them."""
        win = self.in_window()
        nan = float("nan")

        def p50(xs: list[float]) -> float:
            a = np.asarray([x for x in xs if math.isfinite(x)], dtype=float)
            return float(np.percentile(a, 50)) if a.size else nan

        return {
            "users": float(self.users),
            "requests": float(len(win)),
            "ttft_p50_s": p50([r.ttft_s for r in win]),
            "tpot_p50_s": p50([r.tpot_s for r in win]),
            "e2e_p50_s": p50([r.e2e_s for r in win]),
            "output_tps": sum(r.output_tokens for r in win) / self.window_s if self.window_s > 0 else nan,
            # the same rate in a stationary step, but smooth in the profile's parameters (no whole-request
            # quantisation): what the fitter compares measured tokens/s with
            "token_tps": self.window_tokens / self.window_s if self.window_s > 0 else nan,
        }


def scheduler_for(profile: Profile) -> Scheduler:
    """A fresh scheduler with the profile's limits (as SimEngine builds it)."""
    return Scheduler(
        SchedulerConfig(
            max_num_seqs=profile.max_num_seqs,
            max_num_batched_tokens=profile.max_num_batched_tokens,
            num_blocks=profile.num_blocks,
            block_size=profile.block_size,
        )
    )


def simulate_closed_loop(
    profile: Profile | Sequence[Profile],
    users: int,
    workload: Sequence[tuple[int, ...]],
    duration_s: float,
    warmup_s: float = 0.0,
    *,
    client_overhead_s: float = 0.0,
    client_gap_s: float = 0.0,
    client_jitter: float = 0.0,
    spawn_rate: float | None = None,
    seed: int = 0,
    target_requests: int | None = None,
) -> ReplayResult:
    """Replay `users` closed-loop users (no think time, like Locust's constant(0)) against `profile`.

    workload: (prompt_tokens, output_tokens) pairs, or (prompt_tokens, output_tokens, engine) triples when
    `profile` is a list of engines (a routed stack: each request goes to the engine its prompt was routed
    to). Each user draws from it with its own seeded RNG, as the Locust users do with the prompt list.
    Users start at i / spawn_rate (all at 0 without a rate).
    client_overhead_s: fixed per-request client + network + gateway time, half before the request reaches
    the engine and half after its tokens leave it, so it adds to TTFT and E2E but not to TPOT and delays
    the user's next request by the full amount. client_gap_s: time a user takes between the end of one
    response and sending its next request (outside every latency, only slows the loop).
    client_jitter j: each request's overhead is drawn uniformly from client_overhead_s·[1 - j, 1 + j]
    (seeded): real clients and hosts vary, and without any variation closed-loop users with equal output
    lengths lock into synchronized waves whose percentiles flip with tiny parameter changes.
    Each engine loops as SimEngine does: a step starts when the previous one ends (or at the arrival when
    idle), requests that arrived meanwhile join at the next step, tokens are due at the step's end. Engines
    are independent (no shared GPU: K engines on one GPU are system/engines/sim/colocate.py's job).
    Requests count when they end inside [warmup_s, duration_s]; with `target_requests` the replay stops
    early once that many did (the window then ends there): a cheaper estimate of a stationary step.
    """
    profiles = [profile] if isinstance(profile, Profile) else list(profile)
    if users < 1:
        raise ValueError("users must be >= 1")
    if not workload or not profiles:
        raise ValueError("empty workload or no engine")
    if duration_s <= warmup_s:
        raise ValueError(f"duration_s {duration_s} must exceed warmup_s {warmup_s}")
    items: list[tuple[int, int, int]] = []
    for item in workload:
        e = int(item[2]) if len(item) > 2 else 0
        if not 0 <= e < len(profiles):
            raise ValueError(f"workload item {item} names engine {e} of {len(profiles)}")
        limit = profiles[e].max_model_len
        p = max(1, min(int(item[0]), limit - 1))
        items.append((p, max(1, min(int(item[1]), limit - p)), e))
    scheds = [scheduler_for(p) for p in profiles]
    in_flight: list[tuple[StepPlan, float] | None] = [None] * len(profiles)  # (plan, end) per engine
    if not 0.0 <= client_jitter <= 1.0:
        raise ValueError("client_jitter must be in [0, 1]")
    half = client_overhead_s / 2.0
    jit = random.Random(f"{seed}-jitter")

    def overhead_half() -> float:
        return half * (1.0 + client_jitter * (2.0 * jit.random() - 1.0)) if client_jitter else half

    rngs = [random.Random(f"{seed}-{u}") for u in range(users)]
    arrivals: list[tuple[float, int, int, float]] = []  # (arrival_ts, seq, user, client start_ts)
    seq = itertools.count()
    for u in range(users):
        start = u / spawn_rate if spawn_rate else 0.0
        arrivals.append((start + overhead_half(), next(seq), u, start))
    heapq.heapify(arrivals)
    owner: dict[int, tuple[int, float]] = {}  # id(request) -> (user, client start)
    result = ReplayResult(users=users, window_start=warmup_s, window_end=duration_s)
    in_window = 0

    def start_step(e: int, t: float) -> None:
        plan = scheds[e].schedule(t)
        if plan is None:  # cannot happen: everything waiting has arrived and an idle cache fits any request
            raise RuntimeError("scheduler planned an empty step with work waiting")
        dt = step_time_s(profiles[e], plan.shape)
        in_flight[e] = (plan, t + dt)
        result.steps += 1
        result.busy_s += dt

    def admit() -> int:
        """Pop the next arrival into its engine's waiting queue; the engine index."""
        ts, _, u, start = heapq.heappop(arrivals)
        p, o, e = rngs[u].choice(items)
        req = SimRequest(str(next(seq)), p, o, ts)
        owner[id(req)] = (u, start)
        scheds[e].add(req)
        return e

    while True:
        # next event: the earliest step end, unless an arrival comes first (ties: the arrival joins the
        # next step, as in the real engine where it arrived while the step ran)
        e_next, t_end = -1, math.inf
        for e, f in enumerate(in_flight):
            if f is not None and f[1] < t_end:
                e_next, t_end = e, f[1]
        if arrivals and arrivals[0][0] <= t_end:
            ts = arrivals[0][0]
            if ts >= duration_s:  # nothing arriving now can end inside the window
                if e_next < 0:
                    break
                heapq.heappop(arrivals)
                continue
            # everything arriving at this instant joins before an idle engine starts its step
            touched = set()
            while arrivals and arrivals[0][0] == ts:
                touched.add(admit())
            for e in touched:
                if in_flight[e] is None:
                    start_step(e, ts)
            continue
        if e_next < 0 or t_end >= duration_s:
            break
        plan, end = in_flight[e_next]  # type: ignore[misc]
        in_flight[e_next] = None
        res = scheds[e_next].finish_step(plan, end)
        if warmup_s <= end <= duration_s:
            result.window_tokens += res.new_tokens
        for req in res.finished:
            u, start = owner.pop(id(req))
            assert req.first_token_ts is not None and req.last_token_ts is not None
            h = overhead_half()
            client_end = req.last_token_ts + h
            n = req.num_output
            result.requests.append(
                ReplayRequest(
                    user=u,
                    start_ts=start,
                    end_ts=client_end,
                    ttft_s=req.first_token_ts + h - start,
                    e2e_s=client_end - start,
                    tpot_s=(req.last_token_ts - req.first_token_ts) / (n - 1) if n > 1 else math.nan,
                    prompt_tokens=req.prompt_tokens,
                    output_tokens=n,
                    preemptions=req.preemptions,
                )
            )
            if warmup_s <= client_end <= duration_s:
                in_window += 1
            nxt = client_end + client_gap_s
            heapq.heappush(arrivals, (nxt + overhead_half(), next(seq), u, nxt))
        if target_requests is not None and in_window >= target_requests:
            result.window_end = end + half * (1.0 + client_jitter)
            break
        # requests that arrived by `end` (including users whose request just ended, with no overhead)
        # join the step that starts now
        touched = set()
        while arrivals and arrivals[0][0] <= end:
            touched.add(admit())
        for e in touched:
            if in_flight[e] is None and e != e_next:
                start_step(e, end)
        if scheds[e_next].has_work():
            start_step(e_next, end)
    return result
