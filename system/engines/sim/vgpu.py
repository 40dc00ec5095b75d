"""A simulated GPU shared by the engines of one sim process: time-sliced GPU work, telemetry counters."""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field

from system.engines.sim.colocate import DEFAULT_SWITCH_S
from system.engines.sim.profiles import Profile

# Power: P = idle + POWER_W_PER_UTIL * util. Idle 70 W is a typical H100 SXM idle draw; the slope is a least
# squares fit to the six (gpu_util_mean, power_mean_w) pairs of results/reference/h100-transformers-serve
# (residuals up to ~90 W: power also depends on what the kernels do, which this ignores).
IDLE_POWER_W = 70.0
POWER_W_PER_UTIL = 345.6


@dataclass
class VirtualGpu:
    """GPU time reservations of the engines sharing it (first fit, FIFO-like), in wall-clock seconds.

    Without MPS the GPU runs one CUDA context at a time, so a step's GPU work starts in the first gap of at
    least its length after its host work is done; a gap next to another engine's work also pays the
    context switch. One engine alone never waits: its step is host + GPU as in costmodel.StepCost.
    """

    index: int = 0
    memory_bytes: int = 0
    switch_s: float = DEFAULT_SWITCH_S
    # reserved (start, end, owner) sorted by start; pruned as time passes
    _busy: list[tuple[float, float, int]] = field(default_factory=list)
    busy_s: float = 0.0  # kernel seconds reserved so far (what NVML utilisation integrates)
    memory_used_bytes: float = 0.0
    created_ts: float = field(default_factory=time.time)

    def attach(self, p: Profile) -> None:
        """An engine process preallocates its share (weights + KV cache + reserve), as NVML then reports."""
        self.memory_used_bytes += p.hardware.memory_bytes * p.gpu_memory_utilization
        self.memory_bytes = max(self.memory_bytes, p.hardware.memory_bytes)

    def reserve(self, ready_ts: float, gpu_s: float, owner: int) -> tuple[float, float]:
        """Book `gpu_s` of GPU time for `owner`, at `ready_ts` or the first gap after it: (start, end)."""
        busy = self._busy
        while busy and busy[0][1] < ready_ts - 5.0:  # long past: nothing can be booked before it again
            busy.pop(0)
        t = ready_ts
        prev_owner = None
        i = bisect.bisect_left(busy, (ready_ts, -1.0, -1))
        if i > 0 and busy[i - 1][1] > t:
            t, prev_owner = busy[i - 1][1], busy[i - 1][2]
        elif i > 0:
            prev_owner = busy[i - 1][2] if busy[i - 1][1] > t - self.switch_s else None
        while True:
            start = t + (self.switch_s if prev_owner is not None and prev_owner != owner else 0.0)
            end = start + gpu_s
            if i >= len(busy) or end + (self.switch_s if busy[i][2] != owner else 0.0) <= busy[i][0]:
                break
            t, prev_owner = busy[i][1], busy[i][2]
            i += 1
        busy.insert(i, (start, end, owner))
        self.busy_s += gpu_s
        return start, end

    def power_w(self, util_pct: float) -> float:
        return IDLE_POWER_W + POWER_W_PER_UTIL * util_pct / 100.0

    def snapshot(self) -> dict[str, float]:
        """Cumulative counters for a telemetry sampler (utilisation = delta busy_s / delta ts)."""
        now = time.time()
        elapsed = max(now - self.created_ts, 1e-9)
        return {
            "ts": now,
            "gpu": self.index,
            "busy_s": self.busy_s,
            "util_pct_since_start": min(100.0, 100.0 * self.busy_s / elapsed),
            "mem_used_mb": self.memory_used_bytes / 1024**2,
            "mem_total_mb": self.memory_bytes / 1024**2,
            "idle_power_w": IDLE_POWER_W,
            "power_w_per_util": POWER_W_PER_UTIL,
        }
