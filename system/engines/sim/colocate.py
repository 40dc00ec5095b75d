"""Offline predictor: K engine instances sharing one GPU, a closed-loop client with a fixed total of requests.

Each instance runs its own step loop (host work, then GPU work, in series: costmodel.StepCost). The
instances are separate processes: their host work runs in parallel (one CPU core each), their GPU work
does not. Without MPS, kernels of different CUDA contexts never run at the same time: the GPU time-slices
between contexts, so the GPU phases of concurrent steps are served one after another (FIFO here), and a
change of context costs `switch_s` of GPU time in which no kernel runs. Memory is split: each instance
gets its own KV cache from its memory fraction.

The scheduling policy is the continuous batching of transformers serve (and vLLM V1): every decoding
sequence runs each step (no max_num_seqs cap below the client's concurrency), then waiting requests are
admitted FCFS into the remaining token budget (`max_num_batched_tokens`), their prompts chunked to fit;
a request is admitted only when its whole sequence fits in the free KV cache (no preemption needed).
The state is aggregated (counts and sums, not per-sequence loops), so a point of 512 requests x 128 tokens
takes milliseconds: the predictor is deterministic and cheap enough to fit against.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from system.engines.sim.costmodel import BatchShape, step_cost
from system.engines.sim.profiles import Profile

# GPU context switch between processes (time-slicing without MPS). Not measured here: Hopper saves and
# restores a context's state on compute preemption in tens of microseconds; the default time slice of a
# busy context is ~2 ms, so a slice boundary falls inside most multi-millisecond GPU phases anyway. 50 us
# per change of context is the assumption; docs/SIMULATOR.md discusses the limits.
DEFAULT_SWITCH_S = 50e-6


@dataclass
class _Req:
    idx: int
    prompt: int
    target: int
    send_ts: float
    inst: int
    done_prefill: int = 0
    first_ts: float = math.nan
    end_ts: float = math.nan


@dataclass
class _Inst:
    """One engine instance: its queues and the aggregate state of its decoding sequences."""

    prof: Profile
    kv_tokens: int
    waiting: deque[_Req] = field(default_factory=deque)
    prefilling: list[_Req] = field(default_factory=list)
    n_dec: int = 0
    sum_ctx: int = 0  # tokens in the KV cache of decoding sequences
    kv_used: int = 0  # tokens reserved (whole sequences) by admitted requests
    step_no: int = 0
    finish_at: dict[int, list[_Req]] = field(default_factory=dict)
    busy: bool = False
    plan: tuple[list[tuple[_Req, int]], int] | None = None  # (prefill chunks, decodes) of the step in flight
    host_s: float = 0.0
    steps: int = 0


@dataclass(frozen=True)
class Prediction:
    tok_per_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    tpot_p50_ms: float
    e2e_p50_s: float
    gpu_util_mean: float  # percent of wall time a kernel runs (NVML "utilization.gpu")
    wall_s: float
    requests: int
    steps: int

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}


def kv_tokens_for(p: Profile) -> int:
    return p.num_blocks * p.block_size


def predict(
    profiles: Profile | Sequence[Profile],
    *,
    concurrency: int,
    input_lengths: Sequence[int],
    output_tokens: int,
    requests: int | None = None,
    switch_s: float = DEFAULT_SWITCH_S,
) -> Prediction:
    """Closed loop with a fixed total: `requests` sends (default len(input_lengths)), at most `concurrency`
    in flight over all instances, request i goes to instance i % K with prompt input_lengths[i]."""
    profs = [profiles] if isinstance(profiles, Profile) else list(profiles)
    k = len(profs)
    n = len(input_lengths) if requests is None else int(requests)
    if k < 1 or n < 1 or concurrency < 1 or output_tokens < 1:
        raise ValueError("need >= 1 instance, request, concurrent stream and output token")
    if n > len(input_lengths):
        raise ValueError(f"{n} requests but only {len(input_lengths)} input lengths")
    insts = [_Inst(p, kv_tokens_for(p)) for p in profs]
    # the front-end latency of each request: half on the way into the engine, half on the way out
    half = [p.request_latency_s / 2.0 for p in profs]
    for i, inst in enumerate(insts):
        if inst.kv_tokens <= 0:
            raise ValueError(f"instance {i} ({inst.prof.name}): the weights do not fit in its memory share")
    reqs: list[_Req] = []
    events: list[tuple[float, int, int, int]] = []  # (time, seq, kind, payload)
    seq = 0
    ARRIVE, HOST_DONE, GPU_DONE, PASS_DONE = 0, 1, 2, 3
    gpu_queue: deque[tuple[int, float]] = deque()  # (instance, gpu seconds)
    gpu_free_at = 0.0
    gpu_owner = -1
    gpu_busy_s = 0.0
    gpu_running = False
    launch_end: dict[int, float] = {}

    def push(t: float, kind: int, payload: int) -> None:
        nonlocal seq
        heapq.heappush(events, (t, seq, kind, payload))
        seq += 1

    def send(t: float) -> None:
        i = len(reqs)
        r = _Req(i, max(1, int(input_lengths[i])), output_tokens, t, i % k)
        need = r.prompt + r.target
        if need > insts[r.inst].kv_tokens:
            raise ValueError(f"request {i} ({need} tokens) can never fit instance {r.inst}'s KV cache")
        reqs.append(r)
        push(t + half[r.inst], ARRIVE, i)

    def start_step(ii: int, t: float) -> None:
        inst = insts[ii]
        p = inst.prof
        budget = max(0, p.max_num_batched_tokens - inst.n_dec)
        chunks: list[tuple[_Req, int]] = []
        pairs = float(inst.sum_ctx + inst.n_dec)  # each decode attends its cache + itself
        kv_read = inst.sum_ctx
        tokens = inst.n_dec
        new = 0
        for r in inst.prefilling:
            if budget <= 0:
                break
            c = min(r.prompt - r.done_prefill, budget)
            chunks.append((r, c))
            budget -= c
        while budget > 0 and inst.waiting:
            r = inst.waiting[0]
            if inst.kv_used + r.prompt + r.target > inst.kv_tokens:
                break
            inst.waiting.popleft()
            inst.kv_used += r.prompt + r.target
            inst.prefilling.append(r)
            c = min(r.prompt, budget)
            chunks.append((r, c))
            budget -= c
            new += 1
        for r, c in chunks:
            a = r.done_prefill
            pairs += c * a + c * (c + 1) / 2.0
            kv_read += a
            tokens += c
        if tokens == 0:
            inst.busy = False
            return
        shape = BatchShape(
            num_tokens=tokens,
            num_seqs=inst.n_dec + len(chunks),
            attn_pairs=pairs,
            kv_read_tokens=kv_read,
            num_new_seqs=new,
        )
        cost = step_cost(p, shape)
        inst.busy = True
        inst.plan = (chunks, inst.n_dec)
        inst.host_s += cost.host_s
        inst.steps += 1
        # host work first (scheduling, input preparation, intake of new requests), then the forward pass;
        # the launches overlap the kernels, so the pass ends at max(kernels done, launches done)
        launch_end[ii] = t + cost.host_s + cost.launch_s
        push(t + cost.host_s, HOST_DONE, ii)
        gpu_need[ii] = cost.gpu_s

    gpu_need: dict[int, float] = {}

    def gpu_start(t: float) -> None:
        nonlocal gpu_running, gpu_free_at, gpu_owner, gpu_busy_s
        if gpu_running or not gpu_queue:
            return
        ii, g = gpu_queue.popleft()
        start = max(t, gpu_free_at)
        if gpu_owner != ii and k > 1:
            start += switch_s
        gpu_owner = ii
        gpu_running = True
        gpu_busy_s += g
        gpu_free_at = start + g
        push(gpu_free_at, GPU_DONE, ii)

    def finish_step(ii: int, t: float) -> None:
        inst = insts[ii]
        assert inst.plan is not None
        chunks, n_dec = inst.plan
        inst.plan = None
        s = inst.step_no
        inst.sum_ctx += n_dec
        for r, c in chunks:
            r.done_prefill += c
            if r.done_prefill >= r.prompt:
                r.first_ts = t
                inst.prefilling.remove(r)
                if r.target <= 1:
                    _complete(ii, r, t)
                else:
                    inst.n_dec += 1
                    inst.sum_ctx += r.prompt + 1
                    inst.finish_at.setdefault(s + r.target - 1, []).append(r)
        for r in inst.finish_at.pop(s, ()):
            inst.n_dec -= 1
            inst.sum_ctx -= r.prompt + r.target
            _complete(ii, r, t)
        inst.step_no = s + 1

    def _complete(ii: int, r: _Req, t: float) -> None:
        inst = insts[ii]
        inst.kv_used -= r.prompt + r.target
        r.end_ts = t + half[ii]
        if len(reqs) < n:
            send(r.end_ts)

    for _ in range(min(concurrency, n)):
        send(0.0)
    while events:
        t, _, kind, payload = heapq.heappop(events)
        if kind == ARRIVE:
            r = reqs[payload]
            inst = insts[r.inst]
            inst.waiting.append(r)
            if not inst.busy:
                start_step(r.inst, t)
        elif kind == HOST_DONE:
            gpu_queue.append((payload, gpu_need[payload]))
            gpu_start(t)
        elif kind == GPU_DONE:
            gpu_running = False
            gpu_start(t)
            if launch_end[payload] > t:  # launch-bound pass: done when its last launch is
                push(launch_end[payload], PASS_DONE, payload)
            else:
                finish_step(payload, t)
                start_step(payload, t)
        else:  # PASS_DONE
            finish_step(payload, t)
            start_step(payload, t)
    done = [r for r in reqs if math.isfinite(r.end_ts)]
    wall = max(r.end_ts for r in done) - min(r.send_ts for r in reqs)
    ttft = np.array([r.first_ts + half[r.inst] - r.send_ts for r in done])
    e2e = np.array([r.end_ts - r.send_ts for r in done])
    tpot = np.array([(r.end_ts - r.first_ts - half[r.inst]) / (r.target - 1) for r in done if r.target > 1])
    return Prediction(
        tok_per_s=sum(r.target for r in done) / wall,
        ttft_p50_ms=float(np.percentile(ttft, 50)) * 1e3,
        ttft_p99_ms=float(np.percentile(ttft, 99)) * 1e3,
        tpot_p50_ms=float(np.percentile(tpot, 50)) * 1e3 if tpot.size else math.nan,
        e2e_p50_s=float(np.percentile(e2e, 50)),
        gpu_util_mean=100.0 * min(1.0, gpu_busy_s / wall),
        wall_s=wall,
        requests=len(done),
        steps=sum(i.steps for i in insts),
    )
