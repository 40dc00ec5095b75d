"""Sim over HTTP: bad input -> OpenAI errors, server keeps serving; disconnect aborts and frees KV."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from system.engines.sim.launch import sim_process


@pytest.fixture(scope="module")
def addr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    log = Path(tmp_path_factory.mktemp("sim")) / "sim.log"
    proc, url = sim_process("debug", log, "--model-name", "tiny")
    host, port = url.removeprefix("http://").split(":")
    with proc:
        yield host, int(port)


def post(addr: tuple[str, int], path: str, body: bytes | dict) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(*addr, timeout=10)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", path, raw, {"content-type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, json.loads(data) if data else {}


def metrics(addr: tuple[str, int]) -> dict[str, float]:
    conn = http.client.HTTPConnection(*addr, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            label = s.labels.get("finished_reason")
            out[s.name + (f"[{label}]" if label else "")] = s.value
    return out


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/chat/completions", b"{oops", 400),
        ("/v1/chat/completions", {"model": "tiny"}, 400),
        (
            "/v1/chat/completions",
            {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
            400,
        ),
        ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": 1}]}, 400),
        (
            "/v1/chat/completions",
            {"model": "tiny", "messages": [{"role": "user", "content": "x " * 5000}]},
            400,
        ),
        ("/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 4096}, 400),
        ("/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": "many"}, 400),
        ("/v1/completions", {"model": "tiny"}, 400),
        ("/v1/completions", {"model": "gpt-4", "prompt": "x"}, 404),
        ("/v1/nothing", {}, 404),
    ],
)
def test_bad_input_gets_an_openai_error_and_the_server_keeps_serving(
    addr: tuple[str, int], path: str, body: bytes | dict, status: int
) -> None:
    got, data = post(addr, path, body)
    assert got == status
    assert set(data["error"]) == {"message", "type", "param", "code"}
    assert data["error"]["message"]
    ok, data = post(addr, "/v1/completions", {"model": "tiny", "prompt": "still alive?", "max_tokens": 2})
    assert ok == 200 and data["usage"]["completion_tokens"] <= 2


def test_wrong_method_is_405(addr: tuple[str, int]) -> None:
    conn = http.client.HTTPConnection(*addr, timeout=10)
    conn.request("GET", "/v1/chat/completions")
    r = conn.getresponse()
    assert r.status == 405 and "error" in json.loads(r.read())
    conn.close()


def test_client_disconnect_mid_stream_aborts_and_frees_kv_blocks(addr: tuple[str, int]) -> None:
    before = metrics(addr)
    conn = http.client.HTTPConnection(*addr, timeout=10)
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "a long answer please " * 20}],
        "max_tokens": 500,
        "ignore_eos": True,
        "stream": True,
    }
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"content-type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200
    assert r.readline().startswith(b"data: ")  # first token arrived: the request holds KV blocks
    during = metrics(addr)
    assert during["vllm:num_requests_running"] == 1
    assert during["vllm:kv_cache_usage_perc"] > 0
    conn.sock.close()  # the client goes away mid-stream (500 tokens would take ~10 s)
    conn.close()
    deadline = time.monotonic() + 3
    while True:
        after = metrics(addr)
        if after["vllm:num_requests_running"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert after["vllm:num_requests_running"] == 0
    assert after["vllm:num_requests_waiting"] == 0
    assert after["vllm:kv_cache_usage_perc"] == 0
    assert after["vllm:request_success_total[abort]"] == before["vllm:request_success_total[abort]"] + 1
    assert after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"] < 500


def test_metrics_expose_vllm_names(addr: tuple[str, int]) -> None:
    m = metrics(addr)
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:time_to_first_token_seconds_count",
        "vllm:e2e_request_latency_seconds_count",
        "vllm:num_preemptions_total",
        "sim:step_lag_seconds_count",
    ):
        assert name in m, name
    assert m["vllm:generation_tokens_total"] > 0 and m["sim:steps_total"] > 0
