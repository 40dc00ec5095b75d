"""Prometheus metrics of one gateway app, in a registry of its own (several apps may share a process)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
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


class LoopHistogram(Collector):
    """A Prometheus histogram for one event loop: `observe` is a bisect and two additions.

    prometheus_client's Histogram takes a lock per bucket and per sum on every observation, for threads
    the gateway does not have; with the caches made cold by the network work around each request, the two
    observations per request took about 1.3 % of the gateway's CPU samples (py-spy, 100 streams). Same
    exposition: `_bucket{le=...}` (cumulative), `_count`, `_sum`."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = list(buckets)
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # le: a value equal to a bound counts in it
        self.sum += value

    def collect(self) -> Iterator[HistogramMetricFamily]:
        cumulative, acc = [], 0
        for bound, n in zip([*self.bounds, float("inf")], self.counts, strict=True):
            acc += n
            cumulative.append((_le(bound), acc))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=cumulative, sum_value=self.sum)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class _RequestCounter(Collector):
    """router_requests_total by expert, policy and status: a dict increment per request."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, int], int] = {}

    def collect(self) -> Iterator[CounterMetricFamily]:
        c = CounterMetricFamily(
            "router_requests",
            "Requests by expert, policy and HTTP status",
            labels=["expert", "policy", "status"],
        )
        for (expert, policy, status), n in sorted(self.counts.items()):
            c.add_metric([expert, policy, str(status)], n)
        yield c


class GatewayMetrics:
    def __init__(self, pool: ExpertPool) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = _RequestCounter()
        r.register(self.requests)
        self.decision = LoopHistogram(
            "router_decision_seconds", "Routing decision time (incl. classification)", DECISION_BUCKETS
        )
        r.register(self.decision)
        self.overhead = LoopHistogram(
            "router_overhead_seconds",
            "Time the gateway itself added (x-router-overhead-ms)",
            OVERHEAD_BUCKETS,
        )
        r.register(self.overhead)
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

    def count_request(self, expert: str, policy: str, status: int) -> None:
        """router_requests_total += 1 (once per request, on the event loop)."""
        counts = self.requests.counts
        key = (expert, policy, status)
        counts[key] = counts.get(key, 0) + 1
