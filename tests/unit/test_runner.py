"""Experiment runner: config validation, step layout, resume after a crash, failures; a stand-in Locust."""

from __future__ import annotations

import json
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from system.config import ConfigError, load_yaml_model
from system.processes import ServerStartError
from system.records import RecordWriter, RequestRecord
from system.runner.config import ExperimentConfig
from system.runner.manifest import read_json, write_json_atomic
from system.runner.plan import describe_plan
from system.runner.runner import ExperimentRunner, RunError
from system.runner.steps import is_complete, locust_arguments

# the one fake upstream, in its vLLM stand-in mode (`... serve MODEL --port P`)
FAKE = [sys.executable, "-m", "system.bench.fake_upstream"]


def make_cfg(tmp_path: Path, **over: Any) -> ExperimentConfig:
    engine = {
        "kind": "vllm",
        "model": "fake/m",
        "executable": FAKE,
        "startup_timeout_s": 20,
    }
    data: dict[str, Any] = {
        "name": "mini",
        "seed": 3,
        "workload": {"kind": "synthetic", "n": 20, "prompt_tokens": 8, "output_tokens": 4},
        "users": [1, 2],
        "repetitions": 2,
        "step_duration_s": 0.5,
        "warmup_s": 0.1,
        "cooldown_s": 0,
        "telemetry": {"scrape_interval_s": 0.1, "gpu_interval_s": 0.1, "procs_interval_s": 0.1},
        "configurations": [
            {
                "name": "solo",
                "topology": "single",
                "via_gateway": False,
                "experts": [{"name": "e", "engine": engine}],
            }
        ],
    }
    data.update(over)
    p = tmp_path / f"exp-{uuid.uuid4().hex[:6]}.yaml"
    p.write_text(yaml.safe_dump(data))
    return load_yaml_model(p, ExperimentConfig)


class StubLocust:
    """Stands in for run_locust: checks the target answers, writes `users` records, can fail on demand."""

    def __init__(
        self, fail_on: dict[tuple[int, int], BaseException | int] | None = None, sleep_s: float = 0.35
    ):
        self.calls: list[dict[str, Any]] = []
        self.fail_on = fail_on or {}
        self.sleep_s = sleep_s

    def __call__(
        self, host: str, users: int, spawn_rate: float, run_time_s: float, records_dir: Path, **kw: Any
    ):
        rep = int(kw["extra_args"][kw["extra_args"].index("--seed") + 1]) - 3
        self.calls.append({"host": host, "users": users, "rep": rep, "spawn_rate": spawn_rate, **kw})
        with urllib.request.urlopen(f"{host}/v1/models", timeout=5) as r:
            model = json.loads(r.read())["data"][0]["id"]
        t0 = time.time()
        with RecordWriter(Path(records_dir) / "records-w0.csv") as w:
            for i in range(users):
                rec = RequestRecord(request_id=f"{users}-{i}", model=model, status=200, success=True)
                rec.start_ts, rec.end_ts = t0 + i, t0 + i + 0.1
                w.write(rec)
        time.sleep(self.sleep_s)  # let the samplers tick
        failure = self.fail_on.get((users, rep))
        if isinstance(failure, BaseException):
            raise failure
        return type("R", (), {"returncode": failure if isinstance(failure, int) else 0, "timed_out": False})()


def _run(cfg: ExperimentConfig, run_dir: Path, stub: StubLocust, **kw: Any):
    return ExperimentRunner(cfg, run_dir, locust_fn=stub, progress=False, echo=lambda s: None, **kw).run()


def test_config_defaults_and_derived_values(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, spawn_rate=None, warmup_s=0.2)
    solo = cfg.configurations[0]
    assert solo.gateway.policy == {"kind": "single"} and not solo.needs_classifier
    routed = make_cfg(
        tmp_path,
        configurations=[
            {
                "name": "r",
                "topology": "routed",
                "experts": [{"name": "a", "engine": {"kind": "sim", "profile": "debug"}}],
            },
            {
                "name": "s",
                "topology": "single",
                "experts": [{"name": "b", "engine": {"kind": "sim", "profile": "debug"}}],
            },
        ],
    )
    r, s = routed.configurations
    assert r.gateway.policy == {"kind": "cluster"} and r.needs_classifier and r.gateway.classifier is not None
    assert s.uses_gateway and s.gateway.policy == {"kind": "single"}  # the baseline pays the same proxy hop
    assert cfg.spawn_rate_for(2) == 4.0  # all users in within half the warm-up (0.1 s -> floored at 0.5 s)
    assert make_cfg(tmp_path, spawn_rate={1: 1, 2: 5}).spawn_rate_for(2) == 5.0
    with pytest.raises(ValueError, match="no such configuration"):
        cfg.select(["nope"])


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"warmup_s": 1.0}, "warmup_s"),
        ({"users": [1, 1]}, "distinct"),
        ({"spawn_rate": {1: 1.0}}, "no rate for users [2]"),
        ({"name": "bad name"}, "experiment name"),
        ({"stepduration": 3}, "stepduration"),
        ({"workload": {"kind": "labeled"}}, "unknown workload kind 'labeled'"),
        ({"workload": {"kind": "labelled", "prompt_tokens": 5}}, "has no option(s) ['prompt_tokens']"),
    ],
)
def test_config_errors(tmp_path: Path, over: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        make_cfg(tmp_path, **over)
    assert needle in str(e.value)


def test_locust_arguments_fix_the_prompt_set_and_vary_order_per_rep(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, locust={"processes": 2, "extra_args": ["--max-tokens", "64"]})
    kind, args = locust_arguments(cfg, "auto", rep=1)
    assert kind == "synthetic"
    assert args == [
        "--model", "auto", "--num-prompts", "20", "--seed", "4",
        "--workload-option", "seed=3", "--workload-option", "prompt_tokens=8",
        "--workload-option", "output_tokens=4", "--max-tokens", "64",
    ]  # fmt: skip


def test_run_writes_the_results_layout(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    stub = StubLocust()
    run_dir = tmp_path / "results" / "mini" / "r1"
    summary = _run(cfg, run_dir, stub)
    assert (summary.ok, summary.failed, summary.skipped) == (4, 0, 0)
    assert [(c["users"], c["rep"]) for c in stub.calls] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert all(c["workload"] == "synthetic" and c["shape"] is None for c in stub.calls)
    manifest = read_json(run_dir / "manifest.json")
    assert manifest["status"] == "ok" and manifest["experiment"] == "mini"
    assert manifest["config"]["users"] == [1, 2]
    assert manifest["host"]["cpu_count_logical"] >= 1 and manifest["host"]["cpu_model"]
    assert "sha" in manifest["git"] and manifest["packages"]["pydantic"]
    assert "gpus" in manifest["gpu"] and manifest["host"]["python"] == sys.version.split()[0]
    conf = read_json(run_dir / "solo" / "config.json")
    assert conf["topology"] == "single" and conf["experts"][0]["name"] == "e"
    step_dir = run_dir / "solo" / "users=2" / "rep=1"
    step = read_json(step_dir / "step.json")
    assert step["status"] == "ok" and step["users"] == 2 and step["rep"] == 1 and step["requests"] == 2
    assert step["start_ts"] == pytest.approx(step["first_start_ts"])
    assert step["end_ts"] <= step["returned_ts"] and step["warmup_s"] == 0.1
    assert step["target_model"] == "e"  # direct to the engine: its served name
    # telemetry: the fake engine's /metrics scraped, its process sampled, gpu.csv present (header at least)
    metrics = (step_dir / "metrics.csv").read_text().splitlines()
    assert metrics[0] == "ts,target,metric,labels,value"
    assert any(",e,vllm:num_requests_running," in line for line in metrics[1:])
    procs = (step_dir / "procs.csv").read_text().splitlines()
    assert len(procs) > 1 and all(",e," in line for line in procs[1:])
    assert (step_dir / "gpu.csv").read_text().startswith("ts,gpu,util_pct")
    assert (run_dir / "solo" / "logs" / "e.log").exists()


def test_resume_after_a_crash_skips_completed_steps(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    run_dir = tmp_path / "run"
    crash = StubLocust(fail_on={(2, 0): KeyboardInterrupt()})  # the "crash" hits the third step
    with pytest.raises(KeyboardInterrupt):
        _run(cfg, run_dir, crash)
    assert read_json(run_dir / "manifest.json")["status"] == "interrupted"
    assert is_complete(run_dir / "solo" / "users=1" / "rep=1")
    partial = run_dir / "solo" / "users=2" / "rep=0"
    assert partial.is_dir() and not (partial / "step.json").exists()  # records, but never marked complete

    again = StubLocust()
    summary = _run(cfg, run_dir, again)
    assert [(c["users"], c["rep"]) for c in again.calls] == [(2, 0), (2, 1)]
    assert (summary.ok, summary.skipped) == (2, 2)
    moved = list((run_dir / "solo" / "_incomplete").iterdir())
    assert len(moved) == 1 and moved[0].name.startswith("users=2-rep=0-")
    # the re-run step holds only its own records (the partial ones were moved, not mixed in)
    assert read_json(partial / "step.json")["requests"] == 2
    manifest = read_json(run_dir / "manifest.json")
    assert manifest["status"] == "ok" and len(manifest["runs"]) == 2


def test_failed_steps_are_recorded_and_rerun(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, users=[1], repetitions=2)
    run_dir = tmp_path / "run"
    stub = StubLocust(fail_on={(1, 0): RuntimeError("boom"), (1, 1): 2})
    summary = _run(cfg, run_dir, stub)
    assert (summary.ok, summary.failed, summary.exit_code) == (0, 2, 1)
    s0 = read_json(run_dir / "solo" / "users=1" / "rep=0" / "step.json")
    s1 = read_json(run_dir / "solo" / "users=1" / "rep=1" / "step.json")
    assert s0["status"] == "failed" and "RuntimeError: boom" in s0["message"]
    assert s1["status"] == "failed" and "exited with code 2" in s1["message"]
    assert read_json(run_dir / "manifest.json")["status"] == "failed"
    assert _run(cfg, run_dir, StubLocust()).ok == 2  # failed steps are not complete: they run again


def test_precreated_complete_step_is_skipped(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, users=[1, 2], repetitions=1)
    run_dir = tmp_path / "run"
    for u in (1, 2):
        write_json_atomic(run_dir / "solo" / f"users={u}" / "rep=0" / "step.json", {"status": "ok"})
    stub = StubLocust()
    summary = _run(cfg, run_dir, stub)
    assert stub.calls == [] and summary.skipped == 2  # nothing pending: the stack is not even started
    assert not (run_dir / "solo" / "logs").exists()


def test_resume_with_a_changed_config_is_refused(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _run(make_cfg(tmp_path, users=[1], repetitions=1), run_dir, StubLocust(sleep_s=0))
    with pytest.raises(RunError, match="different experiment config"):
        _run(make_cfg(tmp_path, users=[1], repetitions=1, step_duration_s=2), run_dir, StubLocust())
    # adding a users step is fine: the sweep lists are not part of the fingerprint
    stub = StubLocust(sleep_s=0)
    _run(make_cfg(tmp_path, users=[1, 2], repetitions=1), run_dir, stub)
    assert [c["users"] for c in stub.calls] == [2]


def test_stack_start_failure_is_a_clear_error(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    cfg.configurations[0].experts[0].engine.env["FAKE_VLLM_MODE"] = "exit"
    run_dir = tmp_path / "run"
    with pytest.raises(ServerStartError, match=r"'solo': stack failed to start.*exited with code 3"):
        _run(cfg, run_dir, StubLocust())
    manifest = read_json(run_dir / "manifest.json")
    assert manifest["status"] == "failed" and "CUDA out of memory" in manifest["runs"][-1]["message"]


def test_dry_run_plan_lists_servers_commands_and_step_state(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    run_dir = tmp_path / "run"
    write_json_atomic(run_dir / "solo" / "users=1" / "rep=0" / "step.json", {"status": "ok"})
    text = describe_plan(cfg, run_dir)
    assert "configuration solo: single, 1 expert(s), direct to the engine" in text
    assert "-m system.bench.fake_upstream serve fake/m --host 127.0.0.1" in text
    assert "users=1 rep=0 spawn_rate=2/s  [done]" in text
    assert "users=2 rep=1 spawn_rate=4/s  [pending]" in text
    assert "3 step(s) to run" in text
    assert not (run_dir / "manifest.json").exists()  # nothing started, nothing written


def test_kill_stale_load_kills_only_the_locust_of_that_records_dir(tmp_path: Path) -> None:
    import subprocess

    from system.runner.steps import kill_stale_load

    def fake_locust(records: Path) -> subprocess.Popen[bytes]:
        code = "import time; time.sleep(60)"
        return subprocess.Popen(
            [sys.executable, "-c", code, "--records-dir", str(records)], start_new_session=True
        )

    mine, other = fake_locust(tmp_path / "a" / "records"), fake_locust(tmp_path / "b" / "records")
    try:
        time.sleep(0.2)
        assert kill_stale_load(tmp_path / "a" / "records") == [mine.pid]
        assert mine.wait(timeout=5) == -9
        assert other.poll() is None
    finally:
        for p in (mine, other):
            p.kill()
            p.wait()


def test_no_ignore_eos_for_engines_that_reject_it(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    _, args = locust_arguments(cfg, "auto", rep=0, ignore_eos=False)
    assert args[-1] == "--no-ignore-eos"
    assert "--no-ignore-eos" not in locust_arguments(cfg, "auto", rep=0)[1]
    assert all(c.accepts_ignore_eos for c in cfg.configurations)  # sims take vLLM's extension
