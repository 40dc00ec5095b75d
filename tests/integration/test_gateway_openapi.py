"""/openapi.json describes the public API, and a bounded schemathesis run against the gateway CLI (fake
upstream on loopback) finds no server error."""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from system.gateway.state import ADMIN_TOKEN_ENV
from system.processes import ServerProcess, free_port
from tests.integration.fakes import fake_upstream
from tests.integration.test_gateway_edge import gateway, url_of

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

pytestmark = pytest.mark.timeout(300)
TOKEN = "fuzz-token"
MAX_EXAMPLES = 25  # per operation and generation mode: ~300 requests in all


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = Path(tmp_path_factory.mktemp("openapi"))
    port = free_port()
    # instant answers, so that a generated max_tokens of a few thousand costs nothing
    os.environ[ADMIN_TOKEN_ENV] = TOKEN  # inherited by the gateway process only while it starts
    try:
        with fake_upstream(tmp, [port], ttft_ms=1, itl_ms=0, chunks=4), gateway(tmp, [port]) as proc:
            os.environ.pop(ADMIN_TOKEN_ENV, None)
            yield proc
    finally:
        os.environ.pop(ADMIN_TOKEN_ENV, None)


def test_openapi_lists_the_public_endpoints_with_schemas(gw: ServerProcess) -> None:
    with urllib.request.urlopen(url_of(gw) + "/openapi.json", timeout=10) as r:
        doc = json.loads(r.read())
    paths = doc["paths"]
    assert set(paths) == {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/health",
        "/metrics",
        "/admin/reload-classifier",
        "/admin/policy",
    }
    chat = paths["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ChatCompletionRequest"
    )
    assert {"200", "400", "415", "431", "502", "503"} <= set(chat["responses"])
    schemas = doc["components"]["schemas"]
    assert {"model", "messages"} <= set(schemas["ChatCompletionRequest"]["required"])
    assert schemas["ErrorResponse"]["properties"]["error"]
    assert "discriminator" in json.dumps(paths["/admin/policy"]["post"]["requestBody"])


def test_schemathesis_finds_no_server_error(gw: ServerProcess) -> None:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation import GenerationMode

    base = url_of(gw)
    schema = schemathesis.openapi.from_url(base + "/openapi.json")
    failures: list[str] = []
    calls = 0
    statuses: dict[str, set[int]] = {}

    def fuzz(op: Any, mode: GenerationMode) -> None:
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,  # the same cases on every run
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=op.as_strategy(generation_mode=mode))
        def check(case: Any) -> None:
            nonlocal calls
            calls += 1
            if calls % 2 and isinstance(case.body, dict) and "model" in case.body:
                case.body["model"] = "auto"  # free text in the schema: make half of them routable
            auth = {"Authorization": f"Bearer {TOKEN}"} if calls % 3 else {}  # admin: with and without
            resp = case.call(base_url=base, headers=auth, timeout=30)
            statuses.setdefault(f"{op.label} {mode.value}", set()).add(resp.status_code)
            if resp.status_code >= 500:
                failures.append(f"{op.label} {mode.value}: {resp.status_code} {resp.text[:200]}")

        try:
            check()
        except Unsatisfiable:
            assert mode == GenerationMode.NEGATIVE  # nothing to negate (a GET without parameters)

    for result in schema.get_all_operations():
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(result.ok(), mode)
    print(f"schemathesis: {calls} requests, {len(failures)} server errors; statuses {statuses}")
    assert calls >= 100
    assert failures == []
    # the generated requests did get through to the expert, not only refusals
    assert 200 in statuses["POST /v1/chat/completions positive"]
    assert 200 in statuses["POST /v1/completions positive"]
