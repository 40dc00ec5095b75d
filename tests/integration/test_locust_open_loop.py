"""Open-loop Locust against the simulator on loopback: achieved rate, records, cut records, concurrency cap.

Locust runs only in a subprocess (system.runner.locust.run_locust); pytest never imports it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from system.engines.sim.launch import sim_process
from system.records import read_records
from system.runner.locust import OpenLoop, run_locust

# the debug profile streams ~50 tokens/s per request: 80-token answers last ~1.6 s, so at 12 req/s about
# 20 requests are in flight whenever the step ends
ARGS = [
    "--max-tokens", "80", "--endpoint", "completions",
    "--workload-option", "prompt_tokens=20", "--workload-option", "output_tokens=80",
]  # fmt: skip


def _run(tmp: Path, base: str, name: str, open_loop: OpenLoop, seconds: float = 6.0):
    return run_locust(
        base,
        1,
        1,
        seconds,
        tmp / name / "records",
        workload="synthetic",
        extra_args=ARGS,
        open_loop=open_loop,
    )


def test_rate_step_sends_the_poisson_schedule_and_records_every_request(tmp_path: Path) -> None:
    proc, base = sim_process("debug", tmp_path / "sim.log", "--model-name", "m")
    with proc:
        res = _run(tmp_path, base, "poisson", OpenLoop(12.0))
    assert res.returncode == 0, res.log_tail()
    assert len(res.arrivals) == 1, res.log_tail()
    arr = res.arrivals[0]
    # the schedule is a seeded Poisson draw: its count over the schedule's length lies within 4 standard
    # deviations of rate x length; the client sent all of it (no cap, a client that kept up), but for at
    # most one arrival that came due as the step stopped
    expected = 12.0 * arr["elapsed_s"]
    assert abs(arr["due"] - expected) <= 4 * math.sqrt(expected), arr
    assert arr["sent"] + arr["dropped"] == arr["due"] and arr["dropped"] <= 1, arr
    assert arr["achieved_rate_rps"] == arr["sent"] / arr["elapsed_s"]
    df = read_records(res.record_paths)
    # every request sent has exactly one record: finished ones, and the ones cut when the step ended
    assert len(df) == arr["sent"] and df["request_id"].is_unique
    cut, ok = df[df["outcome"] == "cut"], df[df["outcome"] == "ok"]
    assert len(ok) + len(cut) == len(df), df["error"].unique()
    assert len(cut) == arr["cut"] > 0
    assert (cut["error"] == "cut: step ended").all() and not cut["success"].any()
    # a cut request ends at the cut with the tokens it had received so far
    assert (cut["end_ts"] >= cut["start_ts"]).all()
    assert cut["end_ts"].max() - cut["end_ts"].min() < 1.0  # all cut at the same moment
    assert (cut["end_ts"].min() >= ok["end_ts"].max() - 0.5).all()
    streaming = cut[cut["ttft_s"].notna()]
    assert len(streaming) > 0 and (streaming["output_tokens"] < 80).all()
    assert (streaming["chunk_tokens"].map(sum) == streaming["output_tokens"]).all()
    assert (ok["output_tokens"] == 80).all() and (ok["chunk_tokens"].map(sum) == 80).all()
    # open loop: starts follow the schedule, not the completions (closed loop would send ~1 per finish)
    starts = np.sort(df["start_ts"].to_numpy())
    assert np.diff(starts).min() < 0.02 < np.diff(starts).max()


def test_max_concurrency_holds_arrivals_back_and_says_so(tmp_path: Path) -> None:
    proc, base = sim_process("debug", tmp_path / "sim.log", "--model-name", "m")
    with proc:
        res = _run(tmp_path, base, "capped", OpenLoop(12.0, max_concurrency=2), seconds=5.0)
    assert res.returncode == 0, res.log_tail()
    arr = res.arrivals[0]
    assert arr["max_in_flight"] <= 2
    assert arr["late_concurrency"] > 0 and arr["dropped"] > 0  # ~1.2 req/s fit through 2 slots, not 12
    assert arr["sent"] + arr["dropped"] == arr["due"]
    df = read_records(res.record_paths)
    assert len(df) == arr["sent"]
    # never more than 2 requests open at once, seen from the records themselves
    events = sorted(
        [(t, 1) for t in df["start_ts"]] + [(t, -1) for t in df["end_ts"]], key=lambda e: (e[0], e[1])
    )
    open_now = peak = 0
    for _, d in events:
        open_now += d
        peak = max(peak, open_now)
    assert peak <= 2
