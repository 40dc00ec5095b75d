"""asyncio driver: runs scheduler steps in real time (each lasts its cost-model time) and wakes streams."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import time

from system.engines.sim.costmodel import step_cost
from system.engines.sim.metrics import SimMetrics
from system.engines.sim.profiles import Profile
from system.engines.sim.scheduler import Scheduler, SchedulerConfig, SimRequest, State
from system.engines.sim.vgpu import VirtualGpu

log = logging.getLogger("sim.engine")
NEVER = 1 << 40  # wake_every for non-streaming requests: only the finish wakes them
SPIN_S = 0.001  # the last stretch before a due time is awaited by yielding, not by a timer


class SimEngine:
    """The step loop.

    Timing: step k covers [start_k, end_k] with end_k = start_k + cost(batch_k). While busy, start_{k+1} =
    end_k (virtual time, so timer jitter does not accumulate); the loop sleeps until end_k on the wall clock
    (`time.time()`), then applies the step, so tokens become visible at (never before) their due time. If the
    loop wakes more than `max_lag_s` late (CPU saturated), the next step is re-anchored to the current wall
    time: the simulated GPU then runs slower than the profile says, the ground truth stays consistent with
    what was emitted, and `sim:step_reanchors_total` / `sim:step_lag_seconds` show it.

    Streams: a handler waits on `req.waiter` (a future). After each step a request is woken at most once and
    only if it has `stream_interval` new tokens, its first token, or has finished (vLLM's --stream-interval).
    """

    def __init__(
        self,
        profile: Profile,
        *,
        model_name: str,
        stream_interval: int = 1,
        max_lag_s: float = 0.02,
        gpu: VirtualGpu | None = None,
    ) -> None:
        self.profile = profile
        # the simulated GPU: its own, or one shared with the other engines of this process (co-location)
        self.gpu = gpu if gpu is not None else VirtualGpu()
        self.gpu.attach(profile)
        self.model_name = model_name
        self.stream_interval = max(1, int(stream_interval))
        self.max_lag_s = max_lag_s
        self.scheduler = Scheduler(
            SchedulerConfig(
                max_num_seqs=profile.max_num_seqs,
                max_num_batched_tokens=profile.max_num_batched_tokens,
                num_blocks=profile.num_blocks,
                block_size=profile.block_size,
            )
        )
        sched = self.scheduler
        self.metrics = SimMetrics(
            model_name,
            running=lambda: len(sched.running),
            waiting=lambda: len(sched.waiting),
            kv_usage=lambda: sched.kv_usage,
        )
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ids = itertools.count()
        self.clock = time.time

    # ---- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="sim-step-loop")
            self._task.add_done_callback(self._on_loop_exit)

    @staticmethod
    def _on_loop_exit(task: asyncio.Task[None]) -> None:
        # a dead step loop would hang every client: fail fast, let the supervisor see the exit
        if not task.cancelled() and task.exception() is not None:
            log.critical("sim step loop crashed; shutting down", exc_info=task.exception())
            os.kill(os.getpid(), signal.SIGTERM)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    # ---- requests ----------------------------------------------------------------------------------------
    def submit(
        self,
        prompt_tokens: int,
        target_output: int,
        finish_reason: str = "length",
        *,
        stream: bool = True,
        arrival_ts: float | None = None,
    ) -> SimRequest:
        """Queue a request (arrival = `arrival_ts`, default now: the server passes the time the request
        reached it, so the modelled front-end latency is part of the true TTFT). Non-streaming requests are
        only woken when they finish."""
        arrival = self.clock() if arrival_ts is None else arrival_ts
        req = SimRequest(f"{next(self._ids)}", prompt_tokens, target_output, arrival, finish_reason)
        req.wake_every = self.stream_interval if stream else NEVER
        self.scheduler.add(req)
        self._wake.set()
        return req

    def abort(self, req: SimRequest) -> None:
        """Client went away: free its KV blocks now and wake its handler."""
        if self.scheduler.abort(req):
            self.metrics.success["abort"].inc()
        self._notify(req)

    @staticmethod
    def _notify(req: SimRequest) -> None:
        w = req.waiter
        if w is not None and not w.done():
            w.set_result(None)

    @staticmethod
    async def wait(req: SimRequest) -> None:
        """Sleep until the engine wakes this request (new tokens to send, finished, or aborted).

        Callers check `req.notified` / `req.done` first; all engine-side changes happen synchronously
        between awaits, so a check followed by wait() cannot miss a wake-up.
        """
        fut = asyncio.get_running_loop().create_future()
        req.waiter = fut
        try:
            await fut
        finally:
            req.waiter = None

    # ---- the step loop -----------------------------------------------------------------------------------
    async def _run(self) -> None:
        sched, clock, m, p = self.scheduler, self.clock, self.metrics, self.profile
        next_start = clock()
        while True:
            if not sched.has_work():
                self._wake.clear()
                await self._wake.wait()
                next_start = clock()
                continue
            now = clock()
            if now - next_start > self.max_lag_s:
                m.reanchors.inc()
                next_start = now
            plan = sched.schedule(next_start)
            if plan is None:
                # only requests that arrived after the (virtual) step start are waiting: start a step now
                next_start = max(now, next_start + 1e-6)
                await asyncio.sleep(0)
                continue
            if plan.preempted:
                m.preemptions.inc(len(plan.preempted))
            # host work, then the forward pass on the (possibly shared) GPU: the GPU work waits for a free
            # slot when co-located engines hold it; launches (no CUDA graphs) overlap the kernels
            cost = step_cost(p, plan.shape)
            host_end = next_start + cost.host_s
            _, gpu_end = self.gpu.reserve(host_end, cost.gpu_s, id(self))
            end = max(gpu_end, host_end + cost.launch_s)
            duration = end - next_start
            # timers alone wake up to a few ms late under load (p99 ~4 ms measured); sleep to 1 ms before the
            # due time, then yield in a loop (other tasks keep running) until it passes: p99 < 1 ms
            delay = end - clock() - SPIN_S
            if delay > 0:
                await asyncio.sleep(delay)
            while clock() < end:
                await asyncio.sleep(0)
            lag = clock() - end
            result = sched.finish_step(plan, end)
            m.observe_step(duration, lag)
            if result.new_tokens:
                m.generation_tokens.inc(result.new_tokens)
            self._after_step(result.emitted, result.finished)
            next_start = end

    def _after_step(self, emitted: list[SimRequest], finished: list[SimRequest]) -> None:
        m = self.metrics
        # Handlers run in wake-up order and one step's sends take a while at ~1,000 streams: wake first
        # tokens (TTFT) before the decode tokens of older requests.
        later: list[SimRequest] = []
        for req in emitted:
            if req.num_output != 1:
                later.append(req)
                continue
            assert req.first_token_ts is not None
            m.ttft.observe(req.first_token_ts - req.arrival_ts)
            m.prompt_tokens.inc(req.prompt_tokens)
            if req.wake_every != NEVER or req.state == State.FINISHED:
                req.notified = 1
                w = req.waiter
                if w is not None and not w.done():
                    w.set_result(None)
        for req in later:
            n = req.num_output
            if n - req.notified >= req.wake_every or req.state == State.FINISHED:
                req.notified = n
                w = req.waiter
                if w is not None and not w.done():
                    w.set_result(None)
        for req in finished:
            m.success[req.finish_reason].inc()
            assert req.last_token_ts is not None and req.first_token_ts is not None
            m.e2e.observe(req.last_token_ts - req.arrival_ts)
            if req.first_scheduled_ts is not None:
                m.queue.observe(req.first_scheduled_ts - req.arrival_ts)
            if req.num_output > 1:
                m.tpot.observe((req.last_token_ts - req.first_token_ts) / (req.num_output - 1))
