"""External deployments on loopback: recorded DCGM/vLLM exporters, discovery, and a whole experiment run
against sims (and a gateway) that the test starts itself and declares `external`."""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

from system.bench._sims import sim_command
from system.engines.external import ExternalNotReady, discover
from system.processes import ServerProcess, free_port
from system.records import read_records, record_files
from system.telemetry.dcgm import DCGM_GPU_HEADER, DcgmSampler, DcgmTarget
from system.telemetry.prometheus import PrometheusScraper

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"
FAKE = Path(__file__).resolve().parent / "fake_recorded_server.py"
MODEL = "meta-llama/Llama-3.1-8B-Instruct"


@contextlib.contextmanager
def recorded(tmp: Path, routes: dict[str, list[Path]], server_header: str = "uvicorn") -> Iterator[str]:
    """A fake exporter/server serving recorded files; yields its base URL."""
    port = free_port()
    cmd = [sys.executable, str(FAKE), "--port", str(port), "--server-header", server_header]
    for path, files in routes.items():
        cmd += ["--route", f"{path}={','.join(str(f) for f in files)}"]
    with ServerProcess(
        cmd,
        name=f"recorded-{port}",
        health_url=f"http://127.0.0.1:{port}/health",
        log_path=tmp / f"recorded-{port}.log",
        startup_timeout_s=20,
    ):
        yield f"http://127.0.0.1:{port}"


def _wait_rows(sampler: DcgmSampler, n: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while sampler.rows_written < n and time.monotonic() < deadline:
        time.sleep(0.05)


def test_dcgm_exporters_land_in_gpu_csv_with_host_ids(tmp_path: Path) -> None:
    a = [FIX / "dcgm" / "h100-node-a.txt", FIX / "dcgm" / "h100-node-a-t2.txt"]
    with (
        recorded(tmp_path, {"/metrics": a}) as node_a,
        recorded(tmp_path, {"/metrics": [FIX / "dcgm" / "a100-node-b.txt"]}) as node_b,
    ):
        down = f"http://127.0.0.1:{free_port()}/metrics"  # an exporter that is not there
        targets = [
            DcgmTarget(url=f"{node_a}/metrics"),
            DcgmTarget(url=f"{node_b}/metrics", host="gpu-node-b"),
            DcgmTarget(url=down),
        ]
        s = DcgmSampler(tmp_path / "gpu.csv", targets, interval_s=0.1, timeout_s=2)
        with s:
            _wait_rows(s, 9)  # 3 GPUs x 3 ticks
    df = pd.read_csv(tmp_path / "gpu.csv")
    assert tuple(df.columns) == DCGM_GPU_HEADER
    assert len(df) >= 9 and set(df["source"]) == {"dcgm"}
    assert set(df["gpu"]) == {"gpu-node-a/0", "gpu-node-a/1", "gpu-node-b/0"}
    # one timestamp per tick for every host, so per-time sums across the cluster line up
    per_tick = df.groupby("ts")["gpu"].nunique()
    assert (per_tick == 3).all()
    a0 = df[df["gpu"] == "gpu-node-a/0"]
    assert set(a0["util_pct"]) == {97.0, 99.0}  # the two recorded snapshots, alternating
    assert set(a0["mem_used_mb"]) == {76451.0, 76513.0}
    assert set(a0["pcie_tx_mb_s"]) == {1250.0, 1310.0}
    b0 = df[df["gpu"] == "gpu-node-b/0"].iloc[0]
    assert (b0["power_w"], b0["sm_clock_mhz"], b0["mem_total_mb"]) == (301.25, 1410.0, 40534.0)
    assert math.isnan(b0["nvlink_tx_mb_s"]) and math.isnan(b0["pcie_rx_mb_s"])  # no DCP fields there
    assert s.failures.get(down, 0) >= 1 and s.note == ""  # a dead exporter costs its rows only


def test_vllm_metrics_are_scraped_into_metrics_rows(tmp_path: Path) -> None:
    with recorded(tmp_path, {"/metrics": [FIX / "vllm" / "metrics.txt"]}) as url:
        scraper = PrometheusScraper(tmp_path / "metrics.csv", {"e0": f"{url}/metrics"})
        rows = scraper.sample()
    by = {(r[2], r[3]): r for r in rows}
    labels = json.dumps({"engine": "0", "model_name": MODEL}, sort_keys=True, separators=(",", ":"))
    assert by[("vllm:num_requests_running", labels)][4] == "37.0"
    assert by[("vllm:kv_cache_usage_perc", labels)][4] == "0.4187"
    assert by[("vllm:time_to_first_token_seconds_count", labels)][4] == "4000.0"
    assert not any(r[2].endswith("_bucket") for r in rows)  # buckets dropped by default
    assert {r[1] for r in rows} == {"e0"}


def test_discover_records_models_and_version_of_a_vllm_server(tmp_path: Path) -> None:
    routes = {"/v1/models": [FIX / "vllm" / "models.json"], "/version": [FIX / "vllm" / "version.json"]}
    with recorded(tmp_path, routes, server_header="uvicorn") as url:
        info = discover("e0", "expert", url, model=None)
        assert info["models"] == [MODEL] and info["served_model"] == MODEL
        assert (info["version"], info["version_source"]) == ("0.10.1.1", "/version")
        assert info["server_header"] == "uvicorn"
        assert info["model_details"][0]["max_model_len"] == 8192
        with pytest.raises(ExternalNotReady, match="does not serve model 'llama'"):
            discover("e0", "expert", url, model="llama")
    # a server without /version: the Server header stands in
    with recorded(tmp_path, {"/v1/models": [FIX / "vllm" / "models.json"]}, server_header="tgi/2.1") as url:
        info = discover("e0", "expert", url, model=MODEL)
        assert (info["version"], info["version_source"]) == ("tgi/2.1", "server header")


def _sim(tmp: Path, name: str, seed: int) -> ServerProcess:
    port = free_port()
    return ServerProcess(
        sim_command(name, port, "debug", seed=seed),
        name=name,
        health_url=f"http://127.0.0.1:{port}/health",
        log_path=tmp / f"{name}.log",
    )


def _gateway(tmp: Path, experts: dict[str, str]) -> ServerProcess:
    port = free_port()
    cfg = {"policy": {"kind": "round_robin"}, "experts": [{"name": n, "url": u} for n, u in experts.items()]}
    (tmp / "gw.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "system.cli", "gateway", "--config", str(tmp / "gw.yaml")]
    return ServerProcess(
        [*cmd, "--host", "127.0.0.1", "--port", str(port)],
        name="ext-gateway",
        health_url=f"http://127.0.0.1:{port}/health",
        log_path=tmp / "ext-gateway.log",
    )


def _url(sp: ServerProcess) -> str:
    assert sp.health_url is not None
    return sp.health_url.removesuffix("/health")


@pytest.mark.slow
def test_experiment_against_external_sims_gateway_and_dcgm(tmp_path: Path) -> None:
    ext = tmp_path / "ext"
    ext.mkdir()
    with contextlib.ExitStack() as es:
        sims = {n: es.enter_context(_sim(ext, n, 1000 * (i + 1))) for i, n in enumerate(["e0", "e1", "big"])}
        urls = {n: _url(sp) for n, sp in sims.items()}
        gw = es.enter_context(_gateway(ext, {"e0": urls["e0"], "e1": urls["e1"]}))
        dcgm = es.enter_context(recorded(ext, {"/metrics": [FIX / "dcgm" / "h100-node-a.txt"]}))

        def expert(n: str, **kw: object) -> dict:
            engine = {"kind": "external", "url": urls[n] + "/v1", "metrics_url": urls[n] + "/metrics", **kw}
            return {"name": n, "engine": engine}

        exp = {
            "name": "external-mini",
            "workload": {"kind": "labelled", "n": 100},
            "users": [2],
            "step_duration_s": 3,
            "warmup_s": 0.5,
            "cooldown_s": 0,
            "locust": {"extra_args": ["--max-tokens", "16"]},
            "telemetry": {"dcgm": [f"{dcgm}/metrics"]},
            "configurations": [
                {  # external experts, our gateway launched here (classifier trained as usual)
                    "name": "routed",
                    "topology": "routed",
                    "experts": [expert("e0"), expert("e1", model="e1")],
                    "gateway": {"classifier": {"train_n": 100}},
                },
                {"name": "single", "topology": "single", "experts": [expert("big")]},
                {  # everything already runs: the gateway too
                    "name": "routed-ext-gw",
                    "topology": "routed",
                    "experts": [expert("e0"), expert("e1")],
                    "gateway": {"url": _url(gw), "metrics_url": _url(gw) + "/metrics"},
                },
            ],
        }
        path = tmp_path / "exp.yaml"
        path.write_text(yaml.safe_dump(exp, sort_keys=False))
        run = tmp_path / "run"
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "system.cli",
                "experiment",
                "run",
                str(path),
                "--out",
                str(run),
                "--no-progress",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=280,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        # the external servers are still ours and alive: the runner stopped nothing it did not start
        assert all(sp.alive() for sp in [*sims.values(), gw])

    manifest = json.loads((run / "manifest.json").read_text())
    eps = manifest["endpoints"]
    assert set(eps) == {"routed", "single", "routed-ext-gw"}
    e0 = eps["routed"]["e0"]
    assert e0["models"] == ["e0"] and e0["served_model"] == "e0"  # discovered from /v1/models
    assert (e0["version"], e0["version_source"]) == ("sim", "/version")
    assert e0["metrics_url"] == urls["e0"] + "/metrics"
    assert eps["routed-ext-gw"]["gateway"]["role"] == "gateway"
    assert eps["single"]["big"]["served_model"] == "big"

    for conf in ("routed", "single", "routed-ext-gw"):
        step_dir = run / conf / "users=2" / "rep=0"
        step = json.loads((step_dir / "step.json").read_text())
        assert step["status"] == "ok", step.get("message")
        df = read_records(record_files(step_dir / "records"))
        # requests still open when the step ended are recorded as "cut"; none may have failed
        assert (df["outcome"] == "ok").sum() > 0 and set(df["outcome"]) <= {"ok", "cut"}
        # no expert process was launched here: no expert logs, externals listed without a pid
        logs = (
            {p.stem for p in (run / conf / "logs").glob("*.log")} if (run / conf / "logs").exists() else set()
        )
        assert not logs & {"e0", "e1", "big"}
        ext_servers = {s["name"] for s in step["stack"]["servers"] if s.get("external")}
        assert ext_servers >= ({"big"} if conf == "single" else {"e0", "e1"})
        metrics = pd.read_csv(step_dir / "metrics.csv")
        assert set(metrics["target"]) >= ({"big"} if conf == "single" else {"e0", "e1"})
        gpu = pd.read_csv(step_dir / "gpu.csv")
        assert set(gpu["source"]) == {"dcgm"} and set(gpu["gpu"]) == {"gpu-node-a/0", "gpu-node-a/1"}
    ext_gw = json.loads((run / "routed-ext-gw" / "users=2" / "rep=0" / "step.json").read_text())
    assert ext_gw["target_url"] == _url(gw) and ext_gw["target_model"] == "auto"
    assert not (run / "routed-ext-gw" / "gateway.yaml").exists()  # nothing configured or launched

    from analysis.load import load_all
    from analysis.metrics import summarize

    data = load_all(run)
    assert set(data.gpu["source"]) == {"dcgm"} and data.gpu["in_window"].any()
    # the report's GPU columns from the cluster's exporter: 2 GPUs, their power summed per sample
    summary = summarize(data.records, data.steps, gpu=data.gpu, metrics=data.metrics).set_index("config")
    for conf in ("routed", "single", "routed-ext-gw"):
        row = summary.loc[conf]
        assert row["gpu_count"] == 2
        assert row["gpu_power_w"] == pytest.approx(512.447 + 289.106)
        assert row["gpu_mem_used_gib"] == pytest.approx((76451 + 37113) / 1024)
        assert row["engine_running_mean"] >= 0  # the sims' /metrics (vllm:num_requests_running) were scraped
