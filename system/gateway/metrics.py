"""Prometheus metrics of one gateway app, in a registry of its own (several apps may share a process)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from system.gateway.pool import ExpertPool

DECISION_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1)
OVERHEAD_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1.0)


class _PoolCollector(Collector):
    """Per-expert gauges read from the pool at scrape time, so the hot path pays nothing for them."""

    def __init__(self, pool: ExpertPool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        in_flight = GaugeMetricFamily(
            "router_in_flight", "Outstanding requests per expert", labels=["expert"]
        )
        healthy = GaugeMetricFamily(
            "router_expert_healthy", "1 if the last health checks passed", labels=["expert"]
        )
        breaker = GaugeMetricFamily(
            "router_breaker_open", "1 if the expert's circuit breaker is not closed", labels=["expert"]
        )
        for e in self.pool.experts:
            in_flight.add_metric([e.name], e.outstanding)
            healthy.add_metric([e.name], 1.0 if e.healthy else 0.0)
            breaker.add_metric([e.name], 0.0 if e.breaker.state.value == "closed" else 1.0)
        yield in_flight
        yield healthy
        yield breaker


class GatewayMetrics:
    def __init__(self, pool: ExpertPool) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "router_requests",
            "Requests by expert, policy and HTTP status",
            ["expert", "policy", "status"],
            registry=r,
        )
        self.decision = Histogram(
            "router_decision_seconds",
            "Routing decision time (incl. classification)",
            buckets=DECISION_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "router_overhead_seconds",
            "Time the gateway itself added (x-router-overhead-ms)",
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "router_upstream_errors",
            "Upstream failures by expert and reason",
            ["expert", "reason"],
            registry=r,
        )
        self.retries = Counter("router_retries", "Connect failures retried on another expert", registry=r)
        self.streams_cut = Counter(
            "router_streams_cut",
            "Streams ended early after their headers went out (expert broke off, or went silent)",
            ["expert", "reason"],
            registry=r,
        )
        self.rejected = Counter(
            "router_rejected", "Requests refused before routing, by reason", ["reason"], registry=r
        )
        r.register(_PoolCollector(pool))
        self._request_children: dict[tuple[str, str, int], Counter] = {}

    def count_request(self, expert: str, policy: str, status: int) -> None:
        """requests_total += 1, with the labelled child cached (labels() costs a lock and a tuple build)."""
        key = (expert, policy, status)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(expert, policy, str(status))
        child.inc()
