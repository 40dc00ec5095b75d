"""Gateway metrics: the loop-local histogram and request counter expose what prometheus_client would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from system.gateway.config import BreakerConfig, ExpertConfig
from system.gateway.metrics import DECISION_BUCKETS, GatewayMetrics, LoopHistogram
from system.gateway.pool import ExpertPool


def _lines(registry: CollectorRegistry) -> list[str]:
    # prometheus_client also writes a `_created` timestamp per series; the loop-local ones have none
    return [x for x in generate_latest(registry).decode().splitlines() if "_created" not in x]


def test_loop_histogram_exposition_equals_prometheus_client() -> None:
    values = [0.0, 1e-5, 2.4e-5, 2.5e-5, 3e-5, 1e-4, 0.099, 0.1, 0.2, 7.0]  # bounds included (le)
    ref = CollectorRegistry()
    h_ref = Histogram("x_seconds", "doc", buckets=DECISION_BUCKETS, registry=ref)
    ours = CollectorRegistry()
    h = LoopHistogram("x_seconds", "doc", DECISION_BUCKETS)
    ours.register(h)
    for v in values:
        h_ref.observe(v)
        h.observe(v)
    assert _lines(ours) == _lines(ref)
    assert h.sum == sum(values) and sum(h.counts) == len(values)


def test_request_counter_exposition_equals_prometheus_client() -> None:
    pool = ExpertPool([ExpertConfig(name="e0", url="http://127.0.0.1:1")], BreakerConfig())
    m = GatewayMetrics(pool)
    ref = CollectorRegistry()
    c_ref = Counter(
        "router_requests",
        "Requests by expert, policy and HTTP status",
        ["expert", "policy", "status"],
        registry=ref,
    )
    for expert, policy, status in [("e0", "cluster", 200), ("e0", "cluster", 200), ("e1", "direct", 502)]:
        m.count_request(expert, policy, status)
        c_ref.labels(expert, policy, str(status)).inc()
    ours = [
        x
        for x in _lines(m.registry)
        if x.startswith(("router_requests", "# HELP router_requests", "# TYPE router_requests"))
    ]
    assert ours == _lines(ref)
    assert 'router_requests_total{expert="e0",policy="cluster",status="200"} 2.0' in ours
