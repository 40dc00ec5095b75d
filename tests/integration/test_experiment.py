"""End to end: `expert-router experiment run` on sims (crash + resume), on stand-in vLLM engines, failures."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from system.records import read_records, record_files

ROOT = Path(__file__).resolve().parents[2]
# the one fake upstream, in its vLLM stand-in mode (`... serve MODEL --port P`)
FAKE = [sys.executable, "-m", "system.bench.fake_upstream"]
CLI = [sys.executable, "-m", "system.cli", "experiment"]


def _write(tmp_path: Path, data: dict, name: str = "exp.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def mini(**over: object) -> dict:
    """The quickstart's shape, tiny: 2 sim experts (routed) vs 1 (single), users [2, 4], 3 s steps."""
    sim = {"kind": "sim", "profile": "debug"}
    data: dict = {
        "name": "mini",
        "seed": 0,
        "workload": {"kind": "labelled", "n": 200},
        "users": [2, 4],
        "step_duration_s": 3,
        "warmup_s": 0.5,
        "cooldown_s": 0,
        "locust": {"extra_args": ["--max-tokens", "24"]},
        "configurations": [
            {
                "name": "routed",
                "topology": "routed",
                "experts": [{"name": "e0", "engine": sim}, {"name": "e1", "engine": sim}],
                "gateway": {"classifier": {"train_n": 200}},
            },
            {"name": "single", "topology": "single", "experts": [{"name": "big", "engine": sim}]},
        ],
    }
    data.update(over)
    return data


def _step(run: Path, conf: str, users: int) -> dict:
    return json.loads((run / conf / f"users={users}" / "rep=0" / "step.json").read_text())


def _wait_for(path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if json.loads(path.read_text()).get("status") == "ok":
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"{path} not written within {timeout_s}s")


@pytest.mark.slow
def test_mini_experiment_on_sims_survives_a_crash_and_resumes(tmp_path: Path) -> None:
    exp = _write(tmp_path, mini())
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [*CLI, "run", str(exp), "--out", str(run), "--no-progress"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_for(run / "routed" / "users=2" / "rep=0" / "step.json", 60)
        # crash in the middle of the next step, while its Locust is writing records
        partial = run / "routed" / "users=4" / "rep=0"
        deadline = time.monotonic() + 20
        while not any((partial / "records").glob("records-*.csv")) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        servers = json.loads((run / "routed" / "servers.json").read_text())
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # a crash: no clean-up code runs in the runner
        proc.wait()
    orphans = [s["pid"] for s in servers.values()]
    assert all(psutil.pid_exists(p) for p in orphans)  # servers live in their own sessions...

    done = subprocess.run(
        [*CLI, "run", str(exp), "--out", str(run), "--no-progress"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 completed step(s) skipped" in done.stderr
    assert "left by an interrupted run" in done.stderr  # ... and the resumed run reaps them
    time.sleep(0.2)
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in orphans)
    leftovers = []  # nothing of either invocation still runs: servers, gateway, Locust
    for p in psutil.process_iter(["cmdline", "status"]):
        if p.info["status"] != "zombie" and str(run) in " ".join(p.info["cmdline"] or []):
            leftovers.append(p.info["cmdline"])
    assert leftovers == []
    assert "3 step(s) ok, 0 failed, 1 skipped" in done.stdout

    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "ok" and len(manifest["runs"]) == 2
    assert manifest["gpu"]["gpus"] == [] or manifest["gpu"]["driver"]
    for conf, experts in (("routed", {"e0", "e1"}), ("single", {"big"})):
        assert json.loads((run / conf / "config.json").read_text())["topology"] == conf
        for users in (2, 4):
            step = _step(run, conf, users)
            assert step["status"] == "ok" and step["requests"] > 0 and step["errors"] == 0
            assert step["load_kind"] == "users" and step["load"] == users and step["sweep_phase"] is None
            assert step["end_ts"] - step["start_ts"] == pytest.approx(3, abs=1.0)
            d = run / conf / f"users={users}" / "rep=0"
            recs = read_records(record_files(d / "records"))
            assert set(recs.loc[recs["status"] == 200, "expert"]) <= experts  # cut before headers: none
            assert (recs["success"] == (recs["outcome"] == "ok")).all() and recs["outcome"].ne("error").all()
            assert ((recs["ttft_s"] <= recs["e2e_s"]) | recs["ttft_s"].isna()).all()
            metrics = (d / "metrics.csv").read_text()
            assert ",gateway,router_" in metrics  # both arms go through the gateway
            assert all(f",{e},vllm:num_requests_running," in metrics for e in experts)
            procs = {line.split(",")[1] for line in (d / "procs.csv").read_text().splitlines()[1:]}
            assert procs == {*experts, "gateway"}
            assert (d / "gpu.csv").read_text().startswith("ts,gpu,util_pct")
    for conf, policy in (("routed", "cluster"), ("single", "single")):
        recs = read_records(p for d in (run / conf).glob("users=*/rep=0") for p in record_files(d))
        answered = recs[recs["status"] == 200]
        assert len(answered) and answered["policy"].eq(policy).all()
        if conf == "routed":
            assert answered["cluster"].min() >= 0
        # a request the step's end cut before the gateway answered has no router headers (seen under load)
        assert recs.loc[recs["status"] != 200, "outcome"].eq("cut").all()
    # the crashed step's partial records were set aside, never mixed into the re-run step
    aside = list((run / "routed" / "_incomplete").iterdir())
    assert len(aside) == 1 and aside[0].name.startswith("users=4-rep=0-")
    assert not (aside[0] / "step.json").exists() and record_files(aside[0] / "records")

    again = subprocess.run(
        [*CLI, "run", str(exp), "--out", str(run), "--no-progress"], cwd=ROOT, capture_output=True
    )
    assert again.returncode == 0 and b"0 step(s) ok, 0 failed, 4 skipped" in again.stdout


def test_routed_vllm_stand_ins_behind_the_gateway(tmp_path: Path) -> None:
    """The vllm launcher path with the stand-in executable: command lines, GPU env, real gateway + Locust."""
    rec = tmp_path / "argv-{}.json"
    experts = []
    for i in range(2):
        engine = {
            "kind": "vllm",
            "model": "org/model-8b",
            "gpus": [i],
            "max_num_seqs": 64,
            "executable": FAKE,
            "env": {"FAKE_VLLM_RECORD": str(rec).format(i)},
            "startup_timeout_s": 30,
        }
        experts.append({"name": f"v{i}", "engine": engine})
    data = mini(
        users=[3],
        configurations=[
            {
                "name": "vllm",
                "topology": "routed",
                "experts": experts,
                "gateway": {"policy": {"kind": "round_robin"}},
            }
        ],
    )
    run = tmp_path / "run"
    r = subprocess.run(
        [*CLI, "run", str(_write(tmp_path, data)), "--out", str(run), "--no-progress"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    for i in range(2):
        seen = json.loads(Path(str(rec).format(i)).read_text())
        assert seen["env"]["CUDA_VISIBLE_DEVICES"] == str(i)
        argv = seen["argv"]
        assert argv[:2] == ["serve", "org/model-8b"]
        assert argv[argv.index("--served-model-name") + 1] == f"v{i}"
        assert argv[argv.index("--max-num-seqs") + 1] == "64"
    step = _step(run, "vllm", 3)
    assert step["status"] == "ok" and step["successes"] == step["requests"] - step["cut"] > 0
    recs = read_records(record_files(run / "vllm"))
    recs = recs[recs["outcome"] != "cut"]  # still streaming when the step ended: no expert header yet
    assert set(recs["expert"]) == {"v0", "v1"}  # round robin reached both stand-ins
    assert (recs["output_tokens"] > 0).all()


def test_stack_start_failure_exits_non_zero_with_the_log_tail(tmp_path: Path) -> None:
    data = mini(configurations=[mini()["configurations"][1]])
    # an unknown profile is caught by validation now; an unknown sim flag still gets past it
    data["configurations"][0]["experts"][0]["engine"]["args"] = ["--no-such-flag"]
    r = subprocess.run(
        [*CLI, "run", str(_write(tmp_path, data)), "--out", str(tmp_path / "run"), "--no-progress"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert "configuration 'single': stack failed to start" in r.stderr
    assert "no-such-flag" in r.stderr  # the sim's own message, from the log tail
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "failed"


def test_cli_dry_run_and_validation_errors(tmp_path: Path) -> None:
    exp = _write(tmp_path, mini())
    r = subprocess.run(
        [*CLI, "run", str(exp), "--dry-run", "--only", "single"], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert "configuration single: single, 1 expert(s), via gateway" in r.stdout
    assert "configuration routed" not in r.stdout
    assert "-m system.cli sim --profile debug" in r.stdout and "2 step(s) to run" in r.stdout
    assert not (ROOT / "results" / "mini").exists()

    bad = _write(tmp_path, mini(users=[2, 2], step_duration_s=-1), "bad.yaml")
    r = subprocess.run([*CLI, "run", str(bad)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0
    assert "users" in r.stderr and "step_duration_s" in r.stderr  # one line per problem
    r = subprocess.run(
        [*CLI, "run", str(exp), "--only", "nope", "--dry-run"], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode != 0 and "no such configuration" in r.stderr

    # an unknown sim profile or gateway policy fails `validate` and `--dry-run`, one line each, before
    # anything starts
    typo = mini()
    typo["configurations"][0]["experts"][0]["engine"]["profile"] = "debgu"
    typo["configurations"][0]["gateway"] = {"policy": {"kind": "clustr"}}
    typo_file = _write(tmp_path, typo, "typo.yaml")
    for args in (["validate", str(typo_file)], ["run", str(typo_file), "--dry-run"]):
        r = subprocess.run([*CLI, *args], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode != 0
        assert "unknown sim profile 'debgu'" in r.stderr
        assert "unknown gateway policy 'clustr'; known: cluster, cluster_spill" in r.stderr
        problems = [ln for ln in r.stderr.splitlines() if "unknown" in ln]
        assert all("'debgu'" in ln or "'clustr'" in ln for ln in problems)  # one line per problem


def test_shipped_experiment_files_validate() -> None:
    from system.runner.config import load_experiment

    quick = load_experiment(ROOT / "experiments" / "quickstart.yaml")
    assert [c.topology for c in quick.configurations] == ["routed", "single"]
    assert len(quick.configurations[0].experts) == 4
    paper = load_experiment(ROOT / "experiments" / "paper.yaml")
    assert paper.users == [1, 10, 50, 100, 250, 500, 750, 1000]
    assert len(paper.configurations[0].experts) == 8
    assert paper.configurations[1].experts[0].engine.profile.endswith("-tp8")
    gpu = load_experiment(ROOT / "experiments" / "paper-vllm.yaml")
    single = gpu.configurations[1].experts[0].engine
    assert single.kind == "vllm" and single.tp == 8
    assert sorted(g for e in gpu.configurations[0].experts for g in e.engine.gpus) == list(range(8))


def test_stack_up_serves_until_interrupted_then_stops_everything(tmp_path: Path) -> None:
    import urllib.request

    exp = _write(tmp_path, mini())
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # started with SIGINT ignored, as from a shell's background job (`make test &`): stack up must still
    # take SIGINT as Ctrl-C (it failed this way when the suite itself ran in the background)
    proc = subprocess.Popen(
        [sys.executable, "-m", "system.cli", "stack", "up", str(exp), "--config-name", "single",
         "--work-dir", str(tmp_path / "stack")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    lines: list[str] = []
    pids: list[int] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("send requests to"):
                break
        target = lines[-1].split()[3].removesuffix("/v1")
        with urllib.request.urlopen(f"{target}/v1/models", timeout=5) as r:
            assert r.status == 200
        pids = [int(x.split("pid ")[1].rstrip(")\n")) for x in lines if "(pid " in x]
        assert len(pids) == 2  # the engine and the gateway
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            for p in pids:  # the servers it did not stop (each leads its own process group)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p, signal.SIGKILL)
    assert proc.returncode == 0, "".join(lines) + rest
    assert "stopped" in rest
    time.sleep(0.2)
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids)
