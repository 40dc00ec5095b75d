"""The gateway CLI in front of real sims, with a really trained classifier, driven by the `openai` client."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from system.processes import ServerProcess, free_port

pytestmark = pytest.mark.timeout(120)

PROMPTS = [
    "Write a short poem about the sea at night.",
    "Explain the difference between civil law and common law.",
    "Brainstorm plot ideas for a short story about a lighthouse keeper.",
    "Translate this sentence into French: the train is late.",
    "What is the derivative of x squared times sine x?",
    "Fix the bug in this Python function that reverses a list.",
]


def sim(tmp: Path, name: str, port: int) -> ServerProcess:
    cmd = [
        sys.executable,
        "-m",
        "system.cli",
        "sim",
        "--profile",
        "debug",
        "--port",
        str(port),
        "--model-name",
        name,
    ]
    return ServerProcess(
        cmd, name=name, health_url=f"http://127.0.0.1:{port}/health", log_path=tmp / f"{name}.log"
    )


def gateway(tmp: Path, cfg: dict[str, Any]) -> tuple[ServerProcess, str]:
    port = free_port()
    path = tmp / f"gateway-{port}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "system.cli", "gateway", "--config", str(path), "--port", str(port)]
    proc = ServerProcess(
        cmd, name="gateway", health_url=f"http://127.0.0.1:{port}/health", log_path=tmp / "gw.log"
    )
    return proc, f"http://127.0.0.1:{port}"


def running(sim_url: str) -> float:
    with urllib.request.urlopen(sim_url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(
        float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith("vllm:num_requests_running")
    )


def wait_idle(sim_url: str, within_s: float) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < within_s:
        if running(sim_url) == 0:
            return time.perf_counter() - t0
        time.sleep(0.02)
    raise AssertionError(f"{sim_url} still has running requests after {within_s}s")


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clf")
    cmd = [sys.executable, "-m", "system.cli", "classifier", "train", "--workload", "labelled", "--k", "2"]
    subprocess.run([*cmd, "--n", "400", "--out", str(out)], check=True, capture_output=True, timeout=120)
    return out


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, classifier_dir: Path) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("simstack")
    ports = [free_port(), free_port()]
    sims = [sim(tmp, f"m{i}", p) for i, p in enumerate(ports)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    cfg = {
        "policy": {"kind": "cluster"},
        "classifier": str(classifier_dir),
        # e0 names its served model, e1 leaves it to discovery: both must reach the right sim
        "experts": [{"name": "e0", "url": urls[0], "model": "m0"}, {"name": "e1", "url": urls[1]}],
        "limits": {"max_body_bytes": 8192},
    }
    gw, gw_url = gateway(tmp, cfg)
    try:
        for s in sims:
            s.start()
        gw.start()
        yield {"url": gw_url, "sims": urls, "classifier": classifier_dir}
    finally:
        for p in (gw, *sims):
            p.stop()


def test_auto_routes_to_the_classifier_cluster(stack: dict[str, Any]) -> None:
    from system.classifier import PromptClassifier

    clf = PromptClassifier.load(stack["classifier"])
    client = openai.OpenAI(base_url=stack["url"] + "/v1", api_key="unused", max_retries=0)
    seen = set()
    for text in PROMPTS:
        want = clf.predict(text)
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": text}], max_tokens=4
        )
        assert raw.headers["x-router-cluster"] == str(want)
        assert raw.headers["x-router-expert"] == f"e{want}"
        assert raw.headers["x-router-policy"] == "cluster"
        assert float(raw.headers["x-router-overhead-ms"]) < 1000
        body = raw.parse()
        assert body.model == f"m{want}"  # "auto" rewritten to the sim's served name
        assert body.model_extra["sim_timing"]["output_tokens"] == body.usage.completion_tokens
        seen.add(want)
    assert seen == {0, 1}, "the test prompts should exercise both clusters"


def test_streaming_through_gateway_keeps_sim_timing(stack: dict[str, Any]) -> None:
    client = openai.OpenAI(base_url=stack["url"] + "/v1", api_key="unused", max_retries=0)
    with client.chat.completions.with_streaming_response.create(
        model="auto",
        messages=[{"role": "user", "content": PROMPTS[0]}],
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    ) as resp:
        assert resp.headers["x-router-expert"] in {"e0", "e1"}
        chunks = list(resp.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 8
    last = chunks[-1]
    assert last.usage.completion_tokens == 8
    timing = last.model_extra["sim_timing"]
    assert timing["output_tokens"] == 8 and timing["first_token_ts"] <= timing["last_token_ts"]

    completion = client.completions.create(model="auto", prompt=PROMPTS[1], max_tokens=3)
    assert completion.usage.completion_tokens == 3


def test_explicit_expert_goes_direct(stack: dict[str, Any]) -> None:
    client = openai.OpenAI(base_url=stack["url"] + "/v1", api_key="unused", max_retries=0)
    for name in ("e0", "e1"):
        raw = client.chat.completions.with_raw_response.create(
            model=name, messages=[{"role": "user", "content": PROMPTS[0]}], max_tokens=2
        )
        assert (raw.headers["x-router-expert"], raw.headers["x-router-policy"]) == (name, "direct")
        assert raw.headers["x-router-cluster"] == "-1"
        assert raw.parse().model == "m" + name[1]
    models = [m.id for m in client.models.list().data]
    assert models == ["auto", "e0", "e1"]


def test_bad_bodies_get_clear_errors(stack: dict[str, Any]) -> None:
    client = openai.OpenAI(base_url=stack["url"] + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.APIStatusError) as exc:
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "x" * 9000}])
    assert exc.value.status_code == 413
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-expert", messages=[{"role": "user", "content": "x"}])
    req = urllib.request.Request(
        stack["url"] + "/v1/chat/completions",
        data=b'{"model": "auto", "messages": [',
        headers={"content-type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as http_err:
        urllib.request.urlopen(req, timeout=5)
    assert http_err.value.code == 400
    assert json.loads(http_err.value.read())["error"]["type"] == "invalid_request_error"


def test_client_disconnect_reaches_the_sim(stack: dict[str, Any]) -> None:
    client = openai.OpenAI(base_url=stack["url"] + "/v1", api_key="unused", max_retries=0)
    for stream in (True, False):
        # long answers on e0 (explicit), then the client goes away
        extra = {"ignore_eos": True, "min_tokens": 400}
        kwargs: dict[str, Any] = {
            "model": "e0",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 400,
        }
        if stream:
            s = client.chat.completions.create(**kwargs, stream=True, extra_body=extra)
            next(iter(s))
            assert running(stack["sims"][0]) == 1
            s.close()
        else:
            slow = openai.OpenAI(base_url=stack["url"] + "/v1", api_key="x", max_retries=0, timeout=0.5)
            with pytest.raises(openai.APITimeoutError):
                slow.chat.completions.create(**kwargs, extra_body=extra)
            slow.close()
        assert wait_idle(stack["sims"][0], 1.0) < 1.0
    with urllib.request.urlopen(stack["url"] + "/health", timeout=5) as r:
        health = json.loads(r.read())
    assert health["in_flight"] == 0 and health["upstream_connections"]["in_use"] == 0


def test_sim_killed_mid_stream_and_down_at_start(tmp_path: Path, classifier_dir: Path) -> None:
    ports = [free_port(), free_port()]
    sims = [sim(tmp_path, f"m{i}", p).start() for i, p in enumerate(ports)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    cfg = {
        "policy": {"kind": "round_robin"},
        "experts": [{"name": "e0", "url": urls[0]}, {"name": "e1", "url": urls[1]}],
        "health": {"interval_s": 0.5},
    }
    gw, gw_url = gateway(tmp_path, cfg)
    try:
        gw.start()
        client = openai.OpenAI(base_url=gw_url + "/v1", api_key="unused", max_retries=0)
        s = client.chat.completions.create(
            model="e0",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=300,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        got = 0
        with pytest.raises(openai.APIError, match="broke off"):
            for _ in s:
                got += 1
                if got == 2:
                    sims[0].kill()
        # the gateway keeps serving: round robin now only finds e1
        for _ in range(4):
            raw = client.chat.completions.with_raw_response.create(
                model="auto", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
            assert raw.headers["x-router-expert"] == "e1"
        assert gw.alive()
    finally:
        gw.stop()
        for p in sims:
            p.stop()
    # a gateway started while e0 is down: 503 for e0 itself, cluster traffic goes to e1
    sims = [sim(tmp_path, "m1b", ports[1]).start()]
    cfg = {
        "policy": {"kind": "cluster"},
        "classifier": str(classifier_dir),
        "experts": [{"name": "e0", "url": urls[0]}, {"name": "e1", "url": urls[1]}],
    }
    gw, gw_url = gateway(tmp_path, cfg)
    try:
        gw.start()
        client = openai.OpenAI(base_url=gw_url + "/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.APIStatusError) as exc:
            client.chat.completions.create(
                model="e0", messages=[{"role": "user", "content": "x"}], max_tokens=1
            )
        assert exc.value.status_code == 503
        for text in PROMPTS:
            raw = client.chat.completions.with_raw_response.create(
                model="auto", messages=[{"role": "user", "content": text}], max_tokens=1
            )
            assert raw.headers["x-router-expert"] == "e1"
    finally:
        gw.stop()
        sims[0].stop()
