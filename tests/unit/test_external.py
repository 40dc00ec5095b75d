"""Engine kind `external`, external gateway and DCGM parsing: config rules, launch plan, readiness, parser."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from pydantic import ValidationError

from system.engines.base import build_launch
from system.engines.external import ExternalEngine, ExternalNotReady, model_ids, wait_ready
from system.processes import ServerStartError, free_port
from system.runner.config import Configuration, ExperimentConfig
from system.runner.plan import describe_plan
from system.runner.stack import Stack, plan_stack
from system.telemetry.dcgm import DcgmTarget, parse_dcgm

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def ext(url: str = "http://10.1.2.3:8000", **kw: object) -> dict:
    return {"kind": "external", "url": url, **kw}


def conf(**over: object) -> Configuration:
    data: dict = {
        "name": "routed",
        "topology": "routed",
        "experts": [{"name": "e0", "engine": ext()}, {"name": "e1", "engine": ext("http://10.1.2.4:8000")}],
    }
    data.update(over)
    return Configuration.model_validate(data)


def test_external_url_is_normalised_and_checked() -> None:
    assert ExternalEngine(url="http://h:8000/v1/").url == "http://h:8000"
    assert ExternalEngine(url="https://h/prefix/").url == "https://h/prefix"
    with pytest.raises(ValidationError, match="must start with http"):
        ExternalEngine(url="h:8000")
    with pytest.raises(ValidationError, match="health_path"):
        ExternalEngine(url="http://h", health_path="health")
    with pytest.raises(ValidationError, match="extra"):
        ExternalEngine.model_validate({"url": "http://h", "gpus": [0]})  # nothing is launched: no gpus


def test_external_launch_starts_nothing_and_keeps_urls() -> None:
    spec = ExternalEngine(url="http://h:8000", model="m", metrics_url="http://h:8000/metrics")
    launch = build_launch(spec, name="e0", port=1234)
    assert launch.external and launch.cmd == []
    assert (launch.base_url, launch.health_url, launch.metrics_url) == (
        "http://h:8000",
        "http://h:8000/health",
        "http://h:8000/metrics",
    )
    assert launch.served_model == "m"
    # no health path: readiness is /v1/models; no model: discovered later
    launch = build_launch(ExternalEngine(url="http://h", health_path=""), name="e0", port=1)
    assert launch.health_url == "http://h/v1/models" and launch.served_model == ""


def test_routed_with_external_experts_still_trains_and_launches_the_local_gateway() -> None:
    c = conf()
    assert c.needs_classifier and c.gateway.classifier is not None
    planned = plan_stack(c, seed=0, ports=[9001, 9002, 8000])
    assert [(p.name, p.launch.external) for p in planned] == [("e0", True), ("e1", True), ("gateway", False)]
    assert planned[-1].launch.cmd[1:4] == ["-m", "system.cli", "gateway"]


def test_external_gateway_rules() -> None:
    c = conf(gateway={"url": "http://gw.example:80/v1", "metrics_url": "http://gw.example:80/metrics"})
    assert c.gateway.external and c.gateway.url == "http://gw.example:80"
    assert not c.needs_classifier and c.gateway.classifier is None and c.gateway.policy == {}
    planned = plan_stack(c, seed=0)
    gw = planned[-1]
    assert gw.role == "gateway" and gw.launch.external and gw.launch.served_model == "auto"
    assert gw.launch.metrics_url == "http://gw.example:80/metrics"
    # a model-name router (vLLM production stack) wants the model name
    assert conf(gateway={"url": "http://gw", "model": "llama"}).gateway.model == "llama"
    with pytest.raises(ValidationError, match="must be engine kind `external`"):
        conf(
            experts=[{"name": "e0", "engine": {"kind": "sim", "profile": "debug"}}],
            gateway={"url": "http://g"},
        )
    with pytest.raises(ValidationError, match="belong to the running gateway"):
        conf(gateway={"url": "http://g", "policy": {"kind": "round_robin"}})
    with pytest.raises(ValidationError, match="via_gateway is false"):
        Configuration.model_validate(
            {
                "name": "s",
                "topology": "single",
                "via_gateway": False,
                "experts": [{"name": "big", "engine": ext()}],
                "gateway": {"url": "http://g"},
            }
        )


def test_ignore_eos_follows_the_external_engine_flag() -> None:
    assert conf().accepts_ignore_eos
    c = conf(experts=[{"name": "e0", "engine": ext(ignore_eos=False)}])
    assert not c.accepts_ignore_eos


def _experiment(**tele: object) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "name": "x",
            "users": [1],
            "step_duration_s": 2,
            "telemetry": tele,
            "configurations": [
                {
                    "name": "routed",
                    "topology": "routed",
                    "experts": [{"name": "e0", "engine": ext()}],
                    "gateway": {"url": "http://gw:8080"},
                    "dcgm": [{"url": "http://node-b:9400/metrics", "host": "node-b", "gpus": [0]}],
                }
            ],
        }
    )


def test_dry_run_plan_shows_external_servers_and_dcgm(tmp_path: Path) -> None:
    cfg = _experiment(dcgm=["http://node-a:9400/metrics"])
    assert cfg.telemetry.dcgm[0] == DcgmTarget(url="http://node-a:9400/metrics")
    text = describe_plan(cfg, tmp_path / "run")
    assert "expert e0: external http://10.1.2.3:8000 (model discovered from /v1/models)" in text
    assert "gateway gateway: external http://gw:8080 (model auto)" in text
    assert "http://node-a:9400/metrics" in text and "http://node-b:9400/metrics" in text
    with pytest.raises(ValidationError, match="plain name"):
        DcgmTarget(url="http://n:9400/metrics", host="a/b")


def test_wait_ready_names_the_server_url_and_what_to_do() -> None:
    url = f"http://127.0.0.1:{free_port()}/health"  # nothing listens there
    with pytest.raises(ExternalNotReady) as e:
        wait_ready({"e0": (url, 0.3)}, poll_s=0.05)
    msg = str(e.value)
    assert "'e0'" in msg and url in msg and "within 0.3s" in msg and "launches nothing" in msg
    assert isinstance(e.value, ServerStartError)  # the runner's "stack failed to start" path


def test_stack_with_unreachable_external_expert_fails_with_the_readiness_message(tmp_path: Path) -> None:
    port = free_port()
    c = Configuration.model_validate(
        {
            "name": "single",
            "topology": "single",
            "via_gateway": False,
            "experts": [{"name": "big", "engine": ext(f"http://127.0.0.1:{port}", startup_timeout_s=0.3)}],
        }
    )
    with pytest.raises(ExternalNotReady, match=f"127.0.0.1:{port}/health"):
        Stack(c, work_dir=tmp_path, seed=0).start()
    assert not (tmp_path / "logs").exists()  # nothing was launched


def test_model_ids_tolerates_odd_bodies() -> None:
    assert model_ids({"data": [{"id": "a"}, {"no": 1}, "x"]}) == ["a"]
    assert model_ids(None) == [] and model_ids({"data": "x"}) == []


def test_parse_dcgm_fixture_columns_units_and_host() -> None:
    text = (FIXTURES / "dcgm" / "h100-node-a.txt").read_text()
    rows = {r["gpu"]: r for r in parse_dcgm(text, DcgmTarget(url="http://10.0.0.7:9400/metrics"))}
    assert set(rows) == {"gpu-node-a/0", "gpu-node-a/1"}  # the exporter's Hostname label names the host
    g0 = rows["gpu-node-a/0"]
    assert (g0["util_pct"], g0["mem_used_mb"], g0["power_w"], g0["sm_clock_mhz"], g0["temp_c"]) == (
        97.0,
        76451.0,
        512.447,
        1980.0,
        61.0,
    )
    assert g0["mem_total_mb"] == 76451 + 3873 + 669  # used + free + reserved (MiB)
    assert (g0["pcie_tx_mb_s"], g0["nvlink_rx_mb_s"]) == (1250.0, 20480.0)  # bytes/s -> MB/s
    only1 = parse_dcgm(text, DcgmTarget(url="http://x/metrics", host="a", gpus=[1]))
    assert [r["gpu"] for r in only1] == ["a/1"]


def test_parse_dcgm_without_profiling_fields_blank_sentinel_and_mig() -> None:
    text = (FIXTURES / "dcgm" / "a100-node-b.txt").read_text()
    (row,) = parse_dcgm(text, DcgmTarget(url="http://10.0.0.8:9400/metrics"))
    assert row["gpu"] == "10.0.0.8:9400/0"  # no Hostname label: the URL names the host
    assert "pcie_tx_mb_s" not in row and row["mem_total_mb"] == 38892 + 1642
    mig = (
        'DCGM_FI_DEV_GPU_UTIL{gpu="0",GPU_I_ID="3",GPU_I_PROFILE="1g.10gb",Hostname="n"} 12\n'
        'DCGM_FI_DEV_GPU_TEMP{gpu="0",GPU_I_ID="3",Hostname="n"} 9223372036854775794\n'
        'DCGM_FI_DEV_GPU_UTIL{gpu="x",Hostname="n"} 5\n'
    )
    (m,) = parse_dcgm(mig, DcgmTarget(url="http://n/metrics"))
    assert m["gpu"] == "n/0/mig3" and m["util_pct"] == 12.0 and math.isnan(m["temp_c"])
