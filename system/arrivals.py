"""Open-loop arrival schedules: Poisson (burstiness 1) or gamma inter-arrival times at a target rate.

As `vllm bench serve`: inter-arrival gaps are gamma distributed with shape `burstiness` and mean 1/rate, so
burstiness 1.0 is a Poisson process, < 1 burstier, > 1 more regular (the gaps' squared coefficient of
variation is 1/burstiness). One seeded schedule serves the whole run: with several load-generator
processes, process i of W sends arrivals i, i+W, i+2W, ... of the same sequence, so their union is exactly
the schedule, whatever W. Pure (numpy only): the Locust user and the tests both use it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

BLOCK = 4096  # gaps drawn per batch: the schedule is unbounded, drawn lazily


def gaps(rate: float, burstiness: float = 1.0, seed: int = 0) -> Iterator[float]:
    """Inter-arrival gaps (s) of the whole schedule, endless."""
    if not rate > 0:
        raise ValueError(f"request rate must be > 0, got {rate}")
    if not burstiness > 0:
        raise ValueError(f"burstiness must be > 0, got {burstiness}")
    rng = np.random.default_rng(seed)
    theta = 1.0 / (rate * burstiness)  # mean = shape * scale = 1 / rate
    while True:
        yield from rng.gamma(shape=burstiness, scale=theta, size=BLOCK).tolist()


def arrival_offsets(
    rate: float, burstiness: float = 1.0, seed: int = 0, *, workers: int = 1, worker_index: int = 0
) -> Iterator[float]:
    """Due times (s after the schedule start) of this worker's share of the schedule, endless, non-decreasing.

    The first arrival is at the first gap (not at 0), as in a Poisson process started at 0.
    """
    if workers < 1 or not 0 <= worker_index < workers:
        raise ValueError(f"worker_index {worker_index} out of range for {workers} worker(s)")
    t = 0.0
    for i, g in enumerate(gaps(rate, burstiness, seed)):
        t += g
        if i % workers == worker_index:
            yield t


def schedule(rate: float, horizon_s: float, burstiness: float = 1.0, seed: int = 0) -> np.ndarray:
    """All due times in [0, horizon_s) of the whole schedule (for tests and planning)."""
    out = []
    for t in arrival_offsets(rate, burstiness, seed):
        if t >= horizon_s:
            break
        out.append(t)
    return np.asarray(out)


def schedule_seed(seed: int, rate: float) -> int:
    """The schedule's seed: the same for every configuration at one (seed, rate), so arms are compared on
    identical arrivals, but different across rates (gamma gaps scale with 1/rate: one seed for all rates
    would give every step the same relative shortfall or excess)."""
    return (int(seed) * 1_000_003 + round(float(rate) * 1000)) % (2**32)


def split_concurrency(max_concurrency: int | None, workers: int, worker_index: int) -> int | None:
    """This worker's share of a global in-flight cap (at least 1 each; the shares sum to the cap when
    the cap is >= workers)."""
    if max_concurrency is None or max_concurrency <= 0:
        return None
    base, extra = divmod(max_concurrency, workers)
    return max(1, base + (1 if worker_index < extra else 0))
