"""Engine launchers: exact command lines and environments from configs, and start-up failure paths."""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

import pytest
import yaml

from system.config import ConfigError, load_yaml_model
from system.engines.base import LAUNCHERS, LaunchSpec, build_launch, engine_process, register_launcher
from system.processes import ServerStartError, free_port
from system.runner.config import ExperimentConfig
from system.runner.stack import Stack, gateway_config, plan_stack

# the one fake upstream, in its vLLM stand-in mode (`... serve MODEL --port P`)
FAKE = [sys.executable, "-m", "system.bench.fake_upstream"]


def _experiment(tmp_path: Path, configurations: list[dict]) -> ExperimentConfig:
    data = {"name": "t", "users": [1], "step_duration_s": 5, "configurations": configurations}
    p = tmp_path / "exp.yaml"
    p.write_text(yaml.safe_dump(data))
    return load_yaml_model(p, ExperimentConfig)


def _single(engine: dict, **conf: object) -> list[dict]:
    return [{"name": "c", "topology": "single", "experts": [{"name": "big", "engine": engine}], **conf}]


def test_vllm_command_line_and_env_exact(tmp_path: Path) -> None:
    engine = {
        "kind": "vllm",
        "model": "meta-llama/Meta-Llama-3-70B-Instruct",
        "gpus": [4, 5, 6, 7],
        "gpu_memory_utilization": 0.85,
        "max_num_seqs": 512,
        "max_model_len": 4096,
        "quantization": "awq",
        "dtype": "float16",
        "args": ["--disable-custom-all-reduce"],
        "env": {"VLLM_LOGGING_LEVEL": "WARNING"},
    }
    cfg = _experiment(tmp_path, _single(engine))
    spec = cfg.configurations[0].experts[0].engine
    launch = build_launch(spec, name="big", port=9123, seed=7)
    assert launch.cmd == [
        "vllm", "serve", "meta-llama/Meta-Llama-3-70B-Instruct",
        "--host", "127.0.0.1", "--port", "9123",
        "--served-model-name", "big", "meta-llama/Meta-Llama-3-70B-Instruct",
        "--tensor-parallel-size", "4",
        "--gpu-memory-utilization", "0.85",
        "--max-num-seqs", "512",
        "--max-model-len", "4096",
        "--quantization", "awq",
        "--dtype", "float16",
        "--seed", "7",
        "--disable-custom-all-reduce",
    ]  # fmt: skip
    assert launch.env == {
        "CUDA_VISIBLE_DEVICES": "4,5,6,7",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "VLLM_LOGGING_LEVEL": "WARNING",
    }
    assert launch.health_url == "http://127.0.0.1:9123/health"
    assert launch.metrics_url == "http://127.0.0.1:9123/metrics"
    assert launch.served_model == "big"
    assert launch.gpus == [4, 5, 6, 7]


def test_vllm_minimal_defaults_and_explicit_tp_and_executable(tmp_path: Path) -> None:
    engine = {
        "kind": "vllm",
        "model": "m",
        "gpus": [0, 1],
        "tensor_parallel_size": 1,
        "executable": ["/x/py", "f"],
    }
    spec = _experiment(tmp_path, _single(engine)).configurations[0].experts[0].engine
    launch = build_launch(spec, name="m", port=1, seed=0)
    assert launch.cmd == [
        "/x/py", "f", "serve", "m", "--host", "127.0.0.1", "--port", "1",
        "--served-model-name", "m", "--tensor-parallel-size", "1",
        "--gpu-memory-utilization", "0.9", "--seed", "0",
    ]  # fmt: skip


def test_transformers_command_line(tmp_path: Path) -> None:
    engine = {
        "kind": "transformers",
        "model": "Qwen/Qwen2.5-0.5B-Instruct",
        "gpus": [3],
        "attn_implementation": "sdpa_paged",
        "dtype": "bfloat16",
    }
    spec = _experiment(tmp_path, _single(engine)).configurations[0].experts[0].engine
    launch = build_launch(spec, name="big", port=8001, seed=5)
    assert launch.cmd == [
        "transformers", "serve", "Qwen/Qwen2.5-0.5B-Instruct",
        "--host", "127.0.0.1", "--port", "8001", "--continuous-batching",
        "--dtype", "bfloat16", "--attn-implementation", "sdpa_paged", "--default-seed", "5",
    ]  # fmt: skip
    assert launch.env["CUDA_VISIBLE_DEVICES"] == "3"
    assert launch.metrics_url is None  # transformers serve has no Prometheus endpoint
    assert launch.served_model == "Qwen/Qwen2.5-0.5B-Instruct"


def test_sim_command_line_uses_this_interpreter(tmp_path: Path) -> None:
    engine = {"kind": "sim", "profile": "debug", "stream_interval": 4}
    spec = _experiment(tmp_path, _single(engine)).configurations[0].experts[0].engine
    launch = build_launch(spec, name="e0", port=9000, seed=11)
    assert launch.cmd == [
        sys.executable, "-m", "system.cli", "sim", "--profile", "debug",
        "--host", "127.0.0.1", "--port", "9000", "--model-name", "e0",
        "--seed", "11", "--stream-interval", "4",
    ]  # fmt: skip
    assert launch.env == {}


def test_stack_plan_seeds_ports_and_gateway_yaml(tmp_path: Path) -> None:
    conf = _experiment(
        tmp_path,
        [
            {
                "name": "routed",
                "topology": "routed",
                "experts": [
                    {"name": f"e{i}", "engine": {"kind": "sim", "profile": "debug"}} for i in range(3)
                ],
                "gateway": {"extra": {"limits": {"max_in_flight": 100}}},
            }
        ],
    ).configurations[0]
    servers = plan_stack(conf, seed=3, ports=[1, 2, 3, 4])
    assert [(s.name, s.role, s.port) for s in servers] == [
        ("e0", "expert", 1),
        ("e1", "expert", 2),
        ("e2", "expert", 3),
        ("gateway", "gateway", 4),
    ]
    seeds = [s.launch.cmd[s.launch.cmd.index("--seed") + 1] for s in servers[:3]]
    assert len(set(seeds)) == 3  # experts draw different output lengths
    gw = gateway_config(conf, servers[:3], tmp_path / "clf")
    assert gw["policy"] == {"kind": "cluster"}
    assert gw["classifier"] == str(tmp_path / "clf")
    assert gw["limits"] == {"max_in_flight": 100}
    assert gw["experts"][1] == {"name": "e1", "url": "http://127.0.0.1:2", "model": "e1"}


@pytest.mark.parametrize(
    ("configurations", "needle"),
    [
        (
            _single({"kind": "vllm", "model": "m", "gpus": [0], "tensor_parallel_size": 2}),
            "tensor_parallel_size",
        ),
        (_single({"kind": "vllm", "model": "m", "gpus": [0, 0]}), "distinct"),
        (_single({"kind": "tgi", "model": "m"}), "kind"),
        (_single({"kind": "sim"}), "profile"),
        (_single({"kind": "sim", "profile": "debug", "typo": 1}), "typo"),
        (
            [
                {
                    "name": "c",
                    "topology": "single",
                    "experts": [
                        {"name": "a", "engine": {"kind": "sim", "profile": "debug"}},
                        {"name": "b", "engine": {"kind": "sim", "profile": "debug"}},
                    ],
                }
            ],
            "exactly one expert",
        ),
        (
            [
                {
                    "name": "c",
                    "topology": "routed",
                    "experts": [
                        {"name": "a", "engine": {"kind": "vllm", "model": "m", "gpus": [0, 1]}},
                        {"name": "b", "engine": {"kind": "vllm", "model": "m", "gpus": [1]}},
                    ],
                }
            ],
            "GPU 1 is given to both",
        ),
    ],
)
def test_engine_config_errors_are_clear(tmp_path: Path, configurations: list[dict], needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        _experiment(tmp_path, configurations)
    assert needle in str(e.value)


def test_launcher_registry_is_pluggable() -> None:
    class Echo:
        def build(
            self, spec: object, *, name: str, port: int, host: str = "127.0.0.1", seed: int = 0
        ) -> LaunchSpec:
            return LaunchSpec(["echo", name], {}, "h", "b", None, name, 1.0)

    class Spec:
        kind = "echo-test"

    register_launcher("echo-test", Echo())
    try:
        assert build_launch(Spec(), name="x", port=1).cmd == ["echo", "x"]
    finally:
        LAUNCHERS.pop("echo-test")
    with pytest.raises(ValueError, match="unknown engine kind"):
        build_launch(Spec(), name="x", port=1)


# ---------------------------------------------------------------- failure paths with the stand-in executable


def _fake_launch(tmp_path: Path, env: dict[str, str], timeout_s: float = 10.0) -> LaunchSpec:
    engine = {"kind": "vllm", "model": "fake/m", "gpus": [2, 3], "executable": FAKE}
    spec = _experiment(tmp_path, _single(engine)).configurations[0].experts[0].engine
    launch = build_launch(spec, name="big", port=free_port(), seed=0)
    launch.env.update(env)
    launch.startup_timeout_s = timeout_s
    return launch


def test_fake_vllm_starts_with_exact_argv_and_gpu_env(tmp_path: Path) -> None:
    record = tmp_path / "record.json"
    launch = _fake_launch(tmp_path, {"FAKE_VLLM_RECORD": str(record)})
    with engine_process(launch, name="big", log_dir=tmp_path) as sp:
        assert sp.alive()
    seen = json.loads(record.read_text())
    assert seen["argv"] == launch.cmd[len(FAKE) :]
    assert seen["env"]["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert not sp.alive()


def test_bad_executable_fails_with_clear_error(tmp_path: Path) -> None:
    launch = _fake_launch(tmp_path, {})
    launch.cmd[0] = str(tmp_path / "no-such-vllm")
    with pytest.raises(ServerStartError, match="cannot execute"):
        engine_process(launch, name="big", log_dir=tmp_path).start()


def test_process_exiting_at_once_fails_fast_with_log_tail(tmp_path: Path) -> None:
    launch = _fake_launch(tmp_path, {"FAKE_VLLM_MODE": "exit"}, timeout_s=60)
    t0 = time.monotonic()
    with pytest.raises(ServerStartError) as e:
        engine_process(launch, name="big", log_dir=tmp_path).start()
    assert time.monotonic() - t0 < 15  # did not wait for the 60 s deadline
    assert "exited with code 3" in str(e.value)
    assert "CUDA out of memory" in str(e.value)  # the log tail


def test_never_healthy_hits_the_deadline_and_is_killed(tmp_path: Path) -> None:
    launch = _fake_launch(tmp_path, {"FAKE_VLLM_MODE": "unhealthy"}, timeout_s=1.5)
    sp = engine_process(launch, name="big", log_dir=tmp_path)
    with pytest.raises(ServerStartError, match="not healthy"):
        sp.start()
    assert not sp.alive()


def test_stack_failure_stops_the_experts_already_running(tmp_path: Path) -> None:
    good = {"kind": "vllm", "model": "m", "executable": FAKE}
    bad = {**good, "env": {"FAKE_VLLM_MODE": "exit"}}
    conf = _experiment(
        tmp_path,
        [
            {
                "name": "c",
                "topology": "routed",
                "experts": [{"name": "good", "engine": good}, {"name": "bad", "engine": bad}],
                "gateway": {"policy": {"kind": "round_robin"}},
            }
        ],
    ).configurations[0]
    st = Stack(conf, work_dir=tmp_path / "w", seed=0)
    with pytest.raises(ServerStartError, match="bad exited with code 3"):
        st.start()
    assert st.procs == {}
    log = (tmp_path / "w" / "logs" / "good.log").read_text()
    assert "fake vllm serving" in log  # it was started ...
    good_port = st.planned[0].port
    with pytest.raises(OSError):  # ... and stopped with the stack: nothing listens any more
        socket.create_connection(("127.0.0.1", good_port), timeout=1).close()


def test_transformers_flag_style_and_cuda_graph(tmp_path: Path) -> None:
    engine = {"kind": "transformers", "model": "/models/x", "model_arg": "flag", "cuda_graph": True}
    spec = _experiment(tmp_path, _single(engine)).configurations[0].experts[0].engine
    cmd = build_launch(spec, name="x", port=9, seed=0).cmd
    assert cmd[:4] == ["transformers", "serve", "--force-model", "/models/x"]
    assert "--cb-use-cuda-graph" in cmd and "--device" not in cmd


def test_share_gpus_allows_experts_on_one_gpu(tmp_path: Path) -> None:
    experts = [
        {"name": n, "engine": {"kind": "transformers", "model": "/m", "gpus": [0]}} for n in ("a", "b")
    ]
    conf = {"name": "c", "topology": "routed", "experts": experts, "share_gpus": True}
    cfg = _experiment(tmp_path, [conf])
    assert [e.engine.gpus for e in cfg.configurations[0].experts] == [[0], [0]]
    with pytest.raises(ConfigError, match="GPU 0 is given to both"):
        _experiment(tmp_path, [{**conf, "share_gpus": False}])


def test_warm_up_sends_requests_and_fails_clearly(tmp_path: Path) -> None:
    import http.server
    import json as _json
    import threading

    from system.engines.base import LaunchSpec
    from system.processes import ServerStartError, free_port
    from system.runner.stack import warm_up

    seen: list[dict] = []

    class H(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(_json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *a: object) -> None:
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    launch = LaunchSpec(cmd=[], env={}, health_url="", base_url=base, metrics_url=None, served_model="m",
                        startup_timeout_s=1)  # fmt: skip
    warm_up(launch, 3)
    srv.shutdown()
    assert len(seen) == 3 and all(b["model"] == "m" and b["max_tokens"] == 4 for b in seen)
    dead = LaunchSpec(cmd=[], env={}, health_url="", base_url=f"http://127.0.0.1:{free_port()}",
                      metrics_url=None, served_model="m", startup_timeout_s=1)  # fmt: skip
    with pytest.raises(ServerStartError, match="warm-up request 1/2"):
        warm_up(dead, 2, timeout_s=2)
    warm_up(dead, 0)  # nothing sent, nothing raised


def test_transformers_configuration_does_not_send_ignore_eos(tmp_path: Path) -> None:
    conf = _experiment(tmp_path, _single({"kind": "transformers", "model": "/m"})).configurations[0]
    assert not conf.accepts_ignore_eos
