"""Load kinds in the runner: rate steps, sweep planning and its run, config validation of loads,
sim profiles and gateway policies; a stand-in Locust (no load generated)."""

from __future__ import annotations

import itertools
import json
import math
import time
from pathlib import Path
from typing import Any

import pytest

from system.config import ConfigError
from system.records import RecordWriter, RequestRecord
from system.runner.config import SweepStop
from system.runner.manifest import read_json
from system.runner.plan import describe_plan
from system.runner.runner import ExperimentRunner
from system.runner.steps import aggregate_arrivals, effective_warmup, load_flags, step_plan
from system.runner.sweep import plan_rates, stop_reason
from tests.unit.test_runner import make_cfg


class LoadStub:
    """Stands in for run_locust: `per_s` completed requests per second of load (users or rate), capped
    at `cap_rps` (a saturating server), one cut request at the end; open-loop calls get an arrivals report."""

    def __init__(self, cap_rps: float = 1e9, rate_cap_rps: float | None = None) -> None:
        self.cap_rps = cap_rps
        self.rate_cap_rps = rate_cap_rps if rate_cap_rps is not None else cap_rps
        self.calls: list[dict[str, Any]] = []

    def __call__(self, host: str, users: int, spawn_rate: float, run_time_s: float, records_dir: Path, **kw):
        ol = kw.get("open_loop")
        load = ol.rate if ol is not None else float(users) * 4.0  # a closed-loop user: 4 req/s
        self.calls.append({"users": users, "open_loop": ol, **kw})
        cap = self.cap_rps if ol is None else self.rate_cap_rps
        n = max(1, int(min(load, cap) * run_time_s))
        t0 = time.time() - run_time_s
        with RecordWriter(Path(records_dir) / "records-w0.csv") as w:
            for i in range(n):
                rec = RequestRecord(request_id=f"{i}", status=200, success=True, output_tokens=10)
                rec.start_ts = t0 + i * run_time_s / n
                rec.ttft_s, rec.e2e_s = 0.01, 0.05
                rec.itl_s, rec.chunk_tokens = [0.004] * 9, [1] * 10
                rec.end_ts = rec.start_ts + rec.e2e_s
                rec.finish_derived()
                w.write(rec)
            cut = RequestRecord(request_id="cut", outcome="cut", error="cut: step ended", start_ts=t0)
            cut.end_ts = t0 + run_time_s
            w.write(cut)
        arrivals = []
        if ol is not None:
            sent = int(ol.rate * run_time_s)
            arrivals = [
                {"target_rate_rps": ol.rate, "elapsed_s": run_time_s, "due": sent, "sent": sent, "dropped": 0,
                 "cut": 1, "late_concurrency": 0, "late_client": 0, "late_ms_threshold": 10.0,
                 "lateness_p99_ms": 1.0, "max_in_flight": 3}
            ]  # fmt: skip
        return type("R", (), {"returncode": 0, "timed_out": False, "arrivals": arrivals})()


def _runner(cfg, run_dir: Path, stub: LoadStub) -> ExperimentRunner:
    return ExperimentRunner(cfg, run_dir, locust_fn=stub, progress=False, echo=lambda s: None)


def test_rate_load_steps_dirs_and_step_json(tmp_path: Path) -> None:
    cfg = make_cfg(
        tmp_path,
        users=None,
        load={"kind": "rate", "rates": [2.5, 10], "max_concurrency": 8, "burstiness": 0.5},
        repetitions=1,
        step_duration_s=2.0,
        warmup_s="auto",
    )
    stub = LoadStub()
    run_dir = tmp_path / "run"
    summary = _runner(cfg, run_dir, stub).run()
    assert (summary.ok, summary.failed) == (2, 0)
    assert [c["open_loop"].rate for c in stub.calls] == [2.5, 10.0]
    assert stub.calls[0]["open_loop"].max_concurrency == 8 and stub.calls[0]["open_loop"].burstiness == 0.5
    step = read_json(run_dir / "solo" / "rate=2.5" / "rep=0" / "step.json")
    assert step["load_kind"] == "rate" and step["load"] == 2.5 and step["users"] is None
    assert step["max_concurrency"] == 8 and step["burstiness"] == 0.5 and step["sweep_phase"] is None
    assert step["cut"] == 1 and step["successes"] == 5
    assert step["arrivals"]["achieved_rate_rps"] == pytest.approx(2.5)
    # auto warm-up: the median E2E of the step (no ramp in open loop)
    assert step["warmup_source"] == "auto" and step["warmup_s"] == pytest.approx(0.05)
    assert (run_dir / "solo" / "rate=10" / "rep=0" / "step.json").exists()
    config = read_json(run_dir / "solo" / "config.json")
    assert config["load"] == {"kind": "rate", "max_concurrency": 8, "burstiness": 0.5}


def test_plan_rates_are_evenly_spaced_strictly_between_the_probes() -> None:
    assert plan_rates(1.0, 9.0, 3) == [3.0, 5.0, 7.0]
    r = plan_rates(0.97, 27.4, 4)
    assert len(r) == 4 and 0.97 < r[0] < r[-1] < 27.4
    gaps = [b - a for a, b in itertools.pairwise(r)]
    assert max(gaps) - min(gaps) < 0.02 * max(gaps)
    assert plan_rates(2.0, 1.5, 1) == [1.5]  # no batching gain: span [sync/2, sync]
    assert plan_rates(math.nan, 3.0, 3) == [] and plan_rates(0.0, 3.0, 3) == []


def test_stop_reason_plateau_and_slo() -> None:
    stop = SweepStop(plateau=0.5, slo_attainment=0.9)
    assert stop_reason(stop, None, (2.0, 100.0), 1.0) is None
    assert stop_reason(stop, (2.0, 100.0), (4.0, 190.0), 0.95) is None  # load x2, throughput x1.9
    assert "plateau" in (stop_reason(stop, (2.0, 100.0), (4.0, 130.0), 0.95) or "")  # +30 % for +100 %
    assert "slo" in (stop_reason(stop, (2.0, 100.0), (4.0, 190.0), 0.5) or "")
    assert stop_reason(SweepStop(), (2.0, 100.0), (4.0, 100.0), 0.0) is None  # off by default


def test_sweep_runs_probes_then_planned_rates_and_stops_at_the_plateau(tmp_path: Path) -> None:
    cfg = make_cfg(
        tmp_path,
        users=None,
        load={"kind": "sweep", "rates": 4, "throughput_users": 8, "stop": {"plateau": 0.5}},
        repetitions=2,
        step_duration_s=2.0,
        warmup_s=0.0,
    )
    # sync 4 req/s, throughput probe (8 users) capped at 14 req/s; open-loop rates beyond 6.5 req/s gain
    # nothing (an overloaded server)
    stub = LoadStub(cap_rps=14.0, rate_cap_rps=6.5)
    run_dir = tmp_path / "run"
    summary = _runner(cfg, run_dir, stub).run()
    doc = json.loads((run_dir / "solo" / "sweep.json").read_text())
    assert doc["status"] == "done"
    assert [p["phase"] for p in doc["phases"]] == ["synchronous", "throughput"]
    sync, tput = (p["req_per_s"] for p in doc["phases"])
    assert sync == pytest.approx(4.0, rel=0.15) and tput == pytest.approx(14.0, rel=0.15)
    assert doc["rates"] == plan_rates(sync, tput, 4)
    assert doc["rates"] == [6.0, 8.0, 10.0, 12.0]
    # 6 -> 8 req/s offered (+33 %) gave +8 % throughput (< half of it): the sweep stops after rate 8
    ran = [s["rate"] for s in doc["steps"]]
    assert ran == [6.0, 8.0]
    assert doc["stopped_early"].startswith("after rate 8: plateau")
    assert summary.failed == 0 and summary.ok == 4 + 2 * len(ran)
    users1 = read_json(run_dir / "solo" / "users=1" / "rep=1" / "step.json")
    assert users1["sweep_phase"] == "synchronous" and users1["load_kind"] == "users" and users1["users"] == 1
    r = read_json(run_dir / "solo" / f"rate={ran[0]:g}" / "rep=0" / "step.json")
    assert r["sweep_phase"] == "interpolated" and r["load_kind"] == "rate"
    # a resumed sweep runs nothing again and keeps its rates
    stub2 = LoadStub(cap_rps=14.0, rate_cap_rps=6.5)
    again = _runner(cfg, run_dir, stub2).run()
    assert stub2.calls == [] and again.ok == 0
    assert json.loads((run_dir / "solo" / "sweep.json").read_text())["rates"] == doc["rates"]


def test_dry_run_describes_rate_and_sweep_loads(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, users=None, load={"kind": "rate", "rates": [1, 2]}, repetitions=1)
    text = describe_plan(cfg, tmp_path / "run")
    assert "rates [1.0, 2.0] req/s (open loop" in text and "rate=1 rep=0" in text and "rate=2 rep=0" in text
    cfg = make_cfg(tmp_path, users=None, load={"kind": "sweep", "rates": 3}, repetitions=1)
    text = describe_plan(cfg, tmp_path / "run2")
    assert "users=1 rep=0 (synchronous)" in text and "users=256 rep=0 (throughput)" in text
    assert "+ 3 interpolated rate step(s)" in text


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"load": {"kind": "users", "users": [1]}}, "either `users: [...]` or `load"),
        ({"users": None, "load": {"kind": "rate", "rates": [1, 1]}}, "distinct positive"),
        ({"users": None, "load": {"kind": "rate", "rates": [-1]}}, "distinct positive"),
        ({"users": None, "load": {"kind": "rate", "rates": [1], "burstiness": 0}}, "greater than 0"),
        ({"users": None, "load": {"kind": "poisson", "rates": [1]}}, "poisson"),
        ({"users": None, "load": {"kind": "sweep", "rates": 0}}, "greater than or equal to 1"),
        ({"warmup_s": "soon"}, "auto"),
    ],
)
def test_load_config_errors(tmp_path: Path, over: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        make_cfg(tmp_path, **over)
    assert needle in str(e.value)


def _routed(policy: dict[str, Any], profile: str = "debug") -> dict[str, Any]:
    return {
        "configurations": [
            {
                "name": "r",
                "topology": "routed",
                "gateway": {"policy": policy},
                "experts": [{"name": "a", "engine": {"kind": "sim", "profile": profile}}],
            }
        ]
    }


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        (_routed({"kind": "cluster"}, profile="llama3-8b-nope"), "unknown sim profile 'llama3-8b-nope'"),
        (
            _routed({"kind": "cluster"}, profile="missing/file.json"),
            "cannot read profile file missing/file.json",
        ),
        (_routed({"kind": "clusterr"}), "unknown gateway policy 'clusterr'; known: cluster, cluster_spill"),
        (_routed({"kind": "cluster_spill", "spill_treshold": 3}), "gateway policy 'cluster_spill'"),
    ],
)
def test_unknown_profiles_and_policies_fail_validation(
    tmp_path: Path, over: dict[str, Any], needle: str
) -> None:
    with pytest.raises(ConfigError) as e:
        make_cfg(tmp_path, **over)
    assert needle in str(e.value)
    assert len(str(e.value).splitlines()) == 2  # the file line and one line for the problem


def test_effective_warmup_auto_config_and_cap(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, warmup_s="auto", step_duration_s=10.0)
    users = step_plan(cfg.configurations[0], tmp_path, "users", 8, 0)
    assert effective_warmup(cfg, users, 4.0, 1.0)["warmup_s"] == 2.0  # the ramp (8 users at 4/s) is longer
    assert effective_warmup(cfg, users, 4.0, 3.0)["warmup_s"] == 3.0  # one median E2E
    capped = effective_warmup(cfg, users, 4.0, 30.0)
    assert capped["warmup_s"] == 5.0 and capped["warmup_flags"] == ["warmup_capped"]
    fixed = make_cfg(tmp_path, warmup_s=0.1, step_duration_s=10.0)
    got = effective_warmup(fixed, users, 4.0, 1.0)
    assert got["warmup_s"] == 0.1 and got["warmup_flags"] == ["warmup_below_median_e2e"]


def test_arrivals_aggregate_over_workers_and_flags() -> None:
    reports = [
        {"target_rate_rps": 10.0, "elapsed_s": 10.0, "due": 53, "sent": 50, "dropped": 3, "cut": 1,
         "late_concurrency": 10, "late_client": 0, "lateness_p99_ms": 40.0, "max_in_flight": 4},
        {"target_rate_rps": 10.0, "elapsed_s": 9.5, "due": 48, "sent": 48, "dropped": 0, "cut": 2,
         "late_concurrency": 0, "late_client": 1, "lateness_p99_ms": 3.0, "max_in_flight": 4},
    ]  # fmt: skip
    agg = aggregate_arrivals(reports)
    assert agg is not None
    assert agg["sent"] == 98 and agg["due"] == 101 and agg["dropped"] == 3 and agg["cut"] == 3
    assert agg["achieved_rate_rps"] == pytest.approx(9.8) and agg["lateness_p99_ms"] == 40.0
    assert load_flags(agg) == ["arrivals_dropped", "arrivals_late_concurrency"]
    assert aggregate_arrivals([]) is None and load_flags(None) == []
    one = dict(agg, dropped=1, late_concurrency=0)
    assert load_flags(one) == []  # one arrival due as the step stopped is a race, not a drop
