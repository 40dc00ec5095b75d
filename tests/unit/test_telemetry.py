"""Telemetry samplers: NVML absent and faked, process CPU/RSS, Prometheus scraping."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from system.telemetry.nvml import GPU_HEADER, GpuSampler, gpu_inventory
from system.telemetry.procs import PROCS_HEADER, ProcessSampler
from system.telemetry.prometheus import METRICS_HEADER, PrometheusScraper, parse_prometheus_text


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


# ---------------------------------------------------------------- NVML


class NVMLError(Exception):
    pass


def fake_pynvml(n_gpus: int = 2, power_supported: bool = True) -> types.ModuleType:
    """A module with pynvml's API surface; every reading is a known function of the GPU index."""
    m = types.ModuleType("pynvml")
    m.NVML_CLOCK_SM = 1
    m.NVML_TEMPERATURE_GPU = 0
    m.calls = {"init": 0, "shutdown": 0}

    def init() -> None:
        m.calls["init"] += 1

    def shutdown() -> None:
        m.calls["shutdown"] += 1

    def power(h: int) -> int:
        if not power_supported:
            raise NVMLError("Not Supported")
        return 300_000 + h * 1000  # mW

    m.nvmlInit = init
    m.nvmlShutdown = shutdown
    m.nvmlDeviceGetCount = lambda: n_gpus
    m.nvmlDeviceGetHandleByIndex = lambda i: i
    m.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"
    m.nvmlSystemGetDriverVersion = lambda: "550.54.15"
    m.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=50 + h, memory=10)
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=(1000 + h) * 2**20, total=81559 * 2**20)
    m.nvmlDeviceGetPowerUsage = power
    m.nvmlDeviceGetClockInfo = lambda h, kind: 1980 if kind == m.NVML_CLOCK_SM else 0
    m.nvmlDeviceGetTemperature = lambda h, kind: 40 + h
    return m


def test_gpu_sampler_without_pynvml_writes_header_and_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` now raises ImportError
    s = GpuSampler(tmp_path / "gpu.csv", interval_s=0.05)
    s.start()
    time.sleep(0.2)
    s.stop()
    assert not s.active
    assert s.note.startswith("no GPU: pynvml not importable")
    assert _rows(tmp_path / "gpu.csv") == [list(GPU_HEADER)]
    inv = gpu_inventory()
    assert inv["gpus"] == [] and inv["driver"] is None and inv["note"].startswith("no GPU")


def test_gpu_sampler_when_nvml_init_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = fake_pynvml()

    def broken() -> None:
        raise NVMLError("NVML Shared Library Not Found")

    m.nvmlInit = broken
    monkeypatch.setitem(sys.modules, "pynvml", m)
    with GpuSampler(tmp_path / "gpu.csv", interval_s=0.05) as s:
        time.sleep(0.1)
    assert "NVML init failed" in s.note and "Library Not Found" in s.note
    assert _rows(tmp_path / "gpu.csv") == [list(GPU_HEADER)]


def test_gpu_sampler_with_fake_nvml_samples_every_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = fake_pynvml(n_gpus=2)
    monkeypatch.setitem(sys.modules, "pynvml", m)
    t0 = time.time()
    with GpuSampler(tmp_path / "gpu.csv", interval_s=0.05) as s:
        time.sleep(0.3)
    t1 = time.time()
    assert s.note == ""
    rows = _rows(tmp_path / "gpu.csv")
    assert rows[0] == list(GPU_HEADER)
    data = rows[1:]
    assert len(data) >= 4 and len(data) % 2 == 0  # both GPUs every tick
    assert {r[1] for r in data} == {"0", "1"}
    for r in data:
        ts, gpu = float(r[0]), int(r[1])
        assert t0 - 0.01 <= ts <= t1 + 0.01  # epoch seconds, aligned with request records
        assert float(r[2]) == 50 + gpu
        assert float(r[3]) == 1000 + gpu
        assert float(r[4]) == 81559
        assert float(r[5]) == pytest.approx(300 + gpu)  # mW -> W
        assert float(r[6]) == 1980
        assert float(r[7]) == 40 + gpu
    assert m.calls["init"] == m.calls["shutdown"] == 1


def test_gpu_sampler_selected_indices_and_unsupported_power(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(n_gpus=4, power_supported=False))
    with GpuSampler(tmp_path / "gpu.csv", interval_s=0.05, indices=[2, 3]):
        time.sleep(0.12)
    data = _rows(tmp_path / "gpu.csv")[1:]
    assert data and {r[1] for r in data} == {"2", "3"}
    assert all(r[5] == "nan" for r in data)  # the board does not report power: NaN, other columns kept
    assert all(float(r[7]) in (42, 43) for r in data)


def test_gpu_inventory_with_fake_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(n_gpus=2))
    inv = gpu_inventory()
    assert inv["driver"] == "550.54.15"
    assert [g["name"] for g in inv["gpus"]] == ["NVIDIA H100 80GB HBM3"] * 2
    assert inv["gpus"][0]["mem_total_mb"] == 81559


# ---------------------------------------------------------------- processes


def test_process_sampler_counts_children_cpu_and_rss(tmp_path: Path) -> None:
    # a parent that spins one busy child: the parent's row must include the child's CPU
    code = (
        "import subprocess, sys, time\n"
        "c = subprocess.Popen([sys.executable, '-c', 'while True: pass'])\n"
        "time.sleep(30)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(0.5)
        with ProcessSampler(tmp_path / "procs.csv", {"engine": parent.pid}, interval_s=0.25):
            time.sleep(1.3)
    finally:
        import psutil

        for c in psutil.Process(parent.pid).children(recursive=True):
            c.kill()
        parent.kill()
        parent.wait()
    rows = _rows(tmp_path / "procs.csv")
    assert rows[0] == list(PROCS_HEADER)
    data = rows[1:]
    assert len(data) >= 3 and all(r[1] == "engine" and int(r[2]) == parent.pid for r in data)
    # the child burns a core (shared with everything else on a loaded box): well above the idle parent
    assert max(float(r[3]) for r in data) > 25
    assert all(float(r[4]) > 5 for r in data)  # two Python interpreters' RSS


def test_process_sampler_skips_a_vanished_process(tmp_path: Path) -> None:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    with ProcessSampler(tmp_path / "procs.csv", lambda: {"gone": p.pid}, interval_s=0.05) as s:
        time.sleep(0.15)
    assert s.errors == 0
    assert _rows(tmp_path / "procs.csv") == [list(PROCS_HEADER)]


# ---------------------------------------------------------------- Prometheus

METRICS_TEXT = """# HELP vllm:num_requests_running Number of requests running.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="e0"} 3.0
# TYPE vllm:generation_tokens counter
vllm:generation_tokens_total{model_name="e0"} 1234.0
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="e0"} 5.0
vllm:time_to_first_token_seconds_bucket{le="+Inf",model_name="e0"} 7.0
vllm:time_to_first_token_seconds_count{model_name="e0"} 7.0
vllm:time_to_first_token_seconds_sum{model_name="e0"} 0.9
"""


def test_parse_prometheus_text() -> None:
    samples = parse_prometheus_text(METRICS_TEXT)
    by_name = {(n, lbl): v for n, lbl, v in samples}
    assert by_name[("vllm:num_requests_running", '{"model_name":"e0"}')] == 3.0
    assert by_name[("vllm:generation_tokens_total", '{"model_name":"e0"}')] == 1234.0
    assert by_name[("vllm:time_to_first_token_seconds_bucket", '{"le":"+Inf","model_name":"e0"}')] == 7.0
    assert len(samples) == 6


@pytest.fixture
def metrics_server() -> object:
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a: object) -> None:
            return

        def do_GET(self) -> None:
            body = METRICS_TEXT.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/metrics"
    srv.shutdown()


def test_scraper_writes_long_rows_and_survives_a_dead_target(tmp_path: Path, metrics_server: str) -> None:
    from system.processes import free_port

    dead = f"http://127.0.0.1:{free_port()}/metrics"
    targets = {"e0": metrics_server, "down": dead}
    with PrometheusScraper(
        tmp_path / "metrics.csv", targets, interval_s=0.1, keep=["vllm:num_", "vllm:gen"]
    ) as s:
        time.sleep(0.45)
    rows = _rows(tmp_path / "metrics.csv")
    assert rows[0] == list(METRICS_HEADER)
    data = rows[1:]
    assert {r[1] for r in data} == {"e0"}
    assert {r[2] for r in data} == {"vllm:num_requests_running", "vllm:generation_tokens_total"}
    ticks = sorted({float(r[0]) for r in data})
    assert len(ticks) >= 3
    assert json.loads(data[0][3]) == {"model_name": "e0"}
    assert s.failures["down"] >= 3 and s.errors == 0


def test_sampler_error_is_counted_not_fatal(tmp_path: Path) -> None:
    class Flaky(PrometheusScraper):
        def scrape_one(self, url: str) -> str:
            return "this is { not prometheus"

    with Flaky(tmp_path / "m.csv", {"x": "http://unused"}, interval_s=0.05) as s:
        time.sleep(0.2)
    assert s.errors >= 2 and s.last_error
    assert _rows(tmp_path / "m.csv") == [list(METRICS_HEADER)]


def test_scraper_drops_histogram_buckets_by_default(tmp_path: Path, metrics_server: str) -> None:
    with PrometheusScraper(tmp_path / "a.csv", {"e0": metrics_server}, interval_s=0.1):
        time.sleep(0.15)
    names = {r[2] for r in _rows(tmp_path / "a.csv")[1:]}
    assert "vllm:time_to_first_token_seconds_count" in names and "vllm:num_requests_running" in names
    assert not any(n.endswith("_bucket") for n in names)
    with PrometheusScraper(tmp_path / "b.csv", {"e0": metrics_server}, interval_s=0.1, drop_suffixes=()):
        time.sleep(0.15)
    assert "vllm:time_to_first_token_seconds_bucket" in {r[2] for r in _rows(tmp_path / "b.csv")[1:]}
