"""vLLM-V1-like continuous-batching scheduler: FCFS, token budget with chunked prefill, paged KV, preemption.

Pure and synchronous (no asyncio, no clock): the caller passes times in, so tests drive it with a virtual
clock. One `schedule()` + `finish_step()` pair is one engine step.
"""

from __future__ import annotations

import contextlib
import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from system.engines.sim.costmodel import BatchShape


class State(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    FINISHED = 2
    ABORTED = 3


class SimRequest:
    """One request inside the scheduler. `target_output` is decided before admission (see engine)."""

    __slots__ = (
        "arrival_ts",
        "finish_reason",
        "first_scheduled_ts",
        "first_token_ts",
        "last_token_ts",
        "notified",
        "num_blocks",
        "num_computed",
        "num_output",
        "preemptions",
        "prompt_tokens",
        "rid",
        "state",
        "target_output",
        "waiter",
        "wake_every",
    )

    def __init__(
        self,
        rid: str,
        prompt_tokens: int,
        target_output: int,
        arrival_ts: float,
        finish_reason: str = "length",
    ) -> None:
        if prompt_tokens < 1 or target_output < 1:
            raise ValueError("a request needs >= 1 prompt token and >= 1 output token")
        self.rid = rid
        self.prompt_tokens = prompt_tokens
        self.target_output = target_output
        self.arrival_ts = arrival_ts
        self.finish_reason = finish_reason  # reported when target_output is reached ("stop" or "length")
        self.num_computed = 0  # tokens whose KV is in the cache (prompt + output so far, after recompute)
        self.num_output = 0  # tokens generated (due) so far
        self.num_blocks = 0
        self.first_scheduled_ts: float | None = None
        self.first_token_ts: float | None = None
        self.last_token_ts: float | None = None
        self.preemptions = 0
        self.state = State.WAITING
        self.notified = 0  # engine-side: tokens the stream handler has been told about
        self.waiter: Any = None  # engine-side: the future the stream handler waits on
        self.wake_every = (
            1  # engine-side: wake the handler every N tokens (stream interval; huge: at the end)
        )

    @property
    def num_tokens(self) -> int:
        """Tokens that exist for this sequence (prompt + generated): what must be in the KV cache."""
        return self.prompt_tokens + self.num_output

    @property
    def done(self) -> bool:
        return self.state >= State.FINISHED


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int
    max_num_batched_tokens: int
    num_blocks: int
    block_size: int = 16


@dataclass
class StepPlan:
    """What one step computes: (request, new tokens) pairs and the aggregate shape for the cost model."""

    entries: list[tuple[SimRequest, int]]
    shape: BatchShape
    start_ts: float
    preempted: list[SimRequest] = field(default_factory=list)
    num_prefill_tokens: int = 0
    num_decode_tokens: int = 0


@dataclass
class StepResult:
    emitted: list[SimRequest]  # got one new token at the step's end
    finished: list[SimRequest]
    new_tokens: int


class Scheduler:
    """Continuous batching after vLLM V1's `Scheduler.schedule()`:

    1. running requests first, in admission order: each asks for all its not-yet-computed tokens (a prefill
       chunk, or 1 when decoding), capped by the remaining token budget (chunked prefill). If the KV blocks
       for them are not free, the newest running request is preempted (blocks freed, progress dropped, back to
       the front of the waiting queue: recompute), until it fits or the request itself was the one preempted;
    2. then, only if nothing was preempted this step, waiting requests in FCFS order while there is budget,
       a free sequence slot and free blocks; the head of the queue blocks everything behind it (no skipping).
    A request whose computed tokens catch up with its known tokens samples one new token at the step's end.
    """

    def __init__(self, cfg: SchedulerConfig) -> None:
        if cfg.num_blocks <= 0 or cfg.max_num_seqs <= 0 or cfg.max_num_batched_tokens <= 0:
            raise ValueError(f"invalid scheduler config: {cfg}")
        self.cfg = cfg
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.free_blocks = cfg.num_blocks
        self.num_preemptions = 0

    # ---- bookkeeping -------------------------------------------------------------------------------------
    @property
    def used_blocks(self) -> int:
        return self.cfg.num_blocks - self.free_blocks

    @property
    def kv_usage(self) -> float:
        return self.used_blocks / self.cfg.num_blocks

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def add(self, req: SimRequest) -> None:
        if (req.prompt_tokens + req.target_output) > self.cfg.num_blocks * self.cfg.block_size:
            raise ValueError(f"request {req.rid} can never fit in the KV cache")
        req.state = State.WAITING
        self.waiting.append(req)

    def _free(self, req: SimRequest) -> None:
        self.free_blocks += req.num_blocks
        req.num_blocks = 0

    def abort(self, req: SimRequest) -> bool:
        """Remove a request wherever it is and free its blocks. False if it had already finished."""
        if req.state == State.WAITING:
            with contextlib.suppress(ValueError):
                self.waiting.remove(req)
        elif req.state == State.RUNNING:
            with contextlib.suppress(ValueError):
                self.running.remove(req)
        else:
            return False
        self._free(req)
        req.state = State.ABORTED
        return True

    def _preempt_last(self) -> SimRequest:
        victim = self.running.pop()
        self._free(victim)
        victim.num_computed = 0  # recompute: prompt + generated tokens are prefilled again
        victim.state = State.WAITING
        victim.preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(victim)
        return victim

    # ---- one step ----------------------------------------------------------------------------------------
    def schedule(self, now: float) -> StepPlan | None:
        """Plan the step starting at `now`; requests that arrive after `now` wait for a later step."""
        bs = self.cfg.block_size
        budget = self.cfg.max_num_batched_tokens
        entries: list[tuple[SimRequest, int]] = []
        preempted: list[SimRequest] = []
        pairs = 0.0
        kv_read = 0
        prefill_tokens = 0
        running = self.running
        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            start = req.num_computed
            n = req.num_tokens - start
            if n > budget:
                n = budget
            need = -(-(start + n) // bs) - req.num_blocks
            if need > self.free_blocks:
                while need > self.free_blocks:
                    victim = self._preempt_last()
                    preempted.append(victim)
                    if victim is req:
                        break
                if req.state != State.RUNNING:
                    break
            self.free_blocks -= need
            req.num_blocks += need
            entries.append((req, n))
            budget -= n
            pairs += n * start + n * (n + 1) / 2.0
            kv_read += start
            if n > 1 or start < req.prompt_tokens:
                prefill_tokens += n
            i += 1
        if not preempted:
            waiting = self.waiting
            while waiting and budget > 0 and len(running) < self.cfg.max_num_seqs:
                req = waiting[0]
                if req.arrival_ts > now:
                    break
                start = req.num_computed
                n = min(req.num_tokens - start, budget)
                need = -(-(start + n) // bs) - req.num_blocks
                if need > self.free_blocks:
                    break
                waiting.popleft()
                self.free_blocks -= need
                req.num_blocks += need
                req.state = State.RUNNING
                if req.first_scheduled_ts is None:
                    req.first_scheduled_ts = now
                running.append(req)
                entries.append((req, n))
                budget -= n
                pairs += n * start + n * (n + 1) / 2.0
                kv_read += start
                prefill_tokens += n
        if not entries:
            return None
        num_tokens = self.cfg.max_num_batched_tokens - budget
        shape = BatchShape(
            num_tokens=num_tokens,
            num_seqs=len(entries),
            attn_pairs=pairs,
            kv_read_tokens=kv_read,
            num_new_seqs=len(entries) - i,  # the first i entries were already running
        )
        return StepPlan(
            entries=entries,
            shape=shape,
            start_ts=now,
            preempted=preempted,
            num_prefill_tokens=prefill_tokens,
            num_decode_tokens=num_tokens - prefill_tokens,
        )

    def finish_step(self, plan: StepPlan, end_ts: float) -> StepResult:
        """Apply a planned step that ended at `end_ts` (requests aborted meanwhile are skipped)."""
        emitted: list[SimRequest] = []
        finished: list[SimRequest] = []
        for req, n in plan.entries:
            if req.state != State.RUNNING:
                continue
            req.num_computed += n
            if req.num_computed >= req.num_tokens:
                req.num_output += 1
                if req.first_token_ts is None:
                    req.first_token_ts = end_ts
                req.last_token_ts = end_ts
                emitted.append(req)
                if req.num_output >= req.target_output:
                    req.state = State.FINISHED
                    self._free(req)
                    finished.append(req)
        if finished:
            self.running = [r for r in self.running if r.state == State.RUNNING]
        return StepResult(emitted=emitted, finished=finished, new_tokens=len(emitted))
