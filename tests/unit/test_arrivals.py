"""Open-loop arrival schedule: rate and burstiness statistics of a seeded schedule (no timing involved)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from system.arrivals import arrival_offsets, schedule, schedule_seed, split_concurrency

N = 40_000  # gaps per check: the standard error of the mean gap is 1/sqrt(N) = 0.5 % of it (Poisson)


def _gaps(rate: float, burstiness: float, seed: int = 7) -> np.ndarray:
    t = np.fromiter(itertools.islice(arrival_offsets(rate, burstiness, seed), N), float)
    return np.diff(np.concatenate([[0.0], t]))


@pytest.mark.parametrize("rate", [0.5, 4.0, 250.0])
@pytest.mark.parametrize("burstiness", [0.25, 1.0, 4.0])
def test_gaps_have_mean_one_over_rate_and_cv2_one_over_burstiness(rate: float, burstiness: float) -> None:
    g = _gaps(rate, burstiness)
    # mean gap 1/rate within 5 standard errors (the gaps' sd is mean/sqrt(burstiness))
    se = (1 / rate) / math.sqrt(burstiness) / math.sqrt(N)
    assert abs(g.mean() - 1 / rate) < 5 * se
    cv2 = g.var() / g.mean() ** 2
    assert cv2 == pytest.approx(1 / burstiness, rel=0.08)
    assert (g >= 0).all()  # very bursty gamma gaps can be below float resolution: simultaneous arrivals


def test_poisson_counts_per_window_have_variance_equal_to_mean() -> None:
    t = schedule(20.0, 2000.0, 1.0, seed=3)
    counts = np.bincount(t.astype(int))  # arrivals per 1 s window
    assert counts.mean() == pytest.approx(20.0, rel=0.03)
    assert counts.var() / counts.mean() == pytest.approx(1.0, abs=0.12)  # Fano factor 1: Poisson


def test_bursty_schedule_counts_are_overdispersed() -> None:
    counts = np.bincount(schedule(20.0, 2000.0, 0.2, seed=3).astype(int))
    assert counts.var() / counts.mean() > 3.0  # gamma shape 0.2: clumps, far burstier than Poisson


def test_seeded_schedule_is_reproducible_and_seeds_differ() -> None:
    a = list(itertools.islice(arrival_offsets(5.0, 1.0, 11), 100))
    assert a == list(itertools.islice(arrival_offsets(5.0, 1.0, 11), 100))
    assert a != list(itertools.islice(arrival_offsets(5.0, 1.0, 12), 100))
    assert all(x < y for x, y in itertools.pairwise(a))
    # same seed and rate for both arms of a comparison; a different one for each rate
    assert schedule_seed(0, 5.0) == schedule_seed(0, 5.0) != schedule_seed(0, 6.0)


@pytest.mark.parametrize("workers", [2, 3])
def test_workers_split_one_schedule_exactly(workers: int) -> None:
    whole = list(itertools.islice(arrival_offsets(9.0, 0.7, 5), 300 * workers))
    shares = [
        list(itertools.islice(arrival_offsets(9.0, 0.7, 5, workers=workers, worker_index=i), 300))
        for i in range(workers)
    ]
    assert sorted(x for s in shares for x in s) == whole


def test_bad_parameters_are_rejected() -> None:
    with pytest.raises(ValueError, match="rate"):
        next(arrival_offsets(0.0))
    with pytest.raises(ValueError, match="burstiness"):
        next(arrival_offsets(1.0, 0.0))
    with pytest.raises(ValueError, match="worker_index"):
        next(arrival_offsets(1.0, workers=2, worker_index=2))


def test_concurrency_cap_is_split_over_workers() -> None:
    assert [split_concurrency(10, 3, i) for i in range(3)] == [4, 3, 3]
    assert split_concurrency(None, 2, 0) is None
    assert [split_concurrency(1, 2, i) for i in range(2)] == [1, 1]  # never 0: a worker must send
