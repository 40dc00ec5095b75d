"""Prometheus metrics under vLLM's names (plus `sim:*` for the simulator's own health), private registry."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# `*_created` samples double the scrape size and nobody reads them (the sim owns its process)
disable_created_metrics()

# Bucket edges as in vLLM's v1/metrics/loggers.py, so dashboards and quantile estimates line up.
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
    120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
LAG_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class SimMetrics:
    """All metrics of one sim process. Gauges read live scheduler state at scrape time (no per-step cost)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(
        self,
        model_name: str,
        running: Callable[[], float],
        waiting: Callable[[], float],
        kv_usage: Callable[[], float],
    ) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        lab = ["model_name"]
        self._g_running = Gauge(
            "vllm:num_requests_running", "Requests in the running batch.", lab, registry=r
        )
        self._g_waiting = Gauge(
            "vllm:num_requests_waiting", "Requests waiting to be scheduled.", lab, registry=r
        )
        self._g_kv = Gauge("vllm:kv_cache_usage_perc", "KV-cache usage, 1 = 100 %.", lab, registry=r)
        # vLLM < 0.10 name of the same gauge, for older dashboards/scrapers
        self._g_kv_old = Gauge("vllm:gpu_cache_usage_perc", "KV-cache usage, 1 = 100 %.", lab, registry=r)
        self._g_running.labels(model_name).set_function(running)
        self._g_waiting.labels(model_name).set_function(waiting)
        self._g_kv.labels(model_name).set_function(kv_usage)
        self._g_kv_old.labels(model_name).set_function(kv_usage)
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Prefilled prompt tokens.", lab, registry=r
        ).labels(model_name)
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Generated tokens.", lab, registry=r
        ).labels(model_name)
        self.preemptions = Counter(
            "vllm:num_preemptions", "Preemptions (recompute).", lab, registry=r
        ).labels(model_name)
        self._success = Counter(
            "vllm:request_success", "Finished requests.", [*lab, "finished_reason"], registry=r
        )
        self.success = {k: self._success.labels(model_name, k) for k in ("stop", "length", "abort")}
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds", "Time to first token.", lab, buckets=TTFT_BUCKETS, registry=r
        ).labels(model_name)
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Arrival to last token.",
            lab,
            buckets=LATENCY_BUCKETS,
            registry=r,
        ).labels(model_name)
        self.queue = Histogram(
            "vllm:request_queue_time_seconds",
            "Arrival to first scheduled.",
            lab,
            buckets=LATENCY_BUCKETS,
            registry=r,
        ).labels(model_name)
        self.tpot = Histogram(
            "vllm:time_per_output_token_seconds", "Mean inter-token time per request.", lab,
            buckets=ITL_BUCKETS, registry=r,
        ).labels(model_name)  # fmt: skip
        # the simulator's own health: how late the step loop wakes vs the cost model's due time
        self.step_lag = Histogram(
            "sim:step_lag_seconds", "Step loop wake-up minus the step's due end time.", buckets=LAG_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.steps = Counter("sim:steps", "Engine steps executed.", registry=r)
        self.reanchors = Counter(
            "sim:step_reanchors",
            "Steps re-anchored to the wall clock because the loop fell behind.",
            registry=r,
        )
        self.busy = Counter(
            "sim:busy_seconds", "Simulated GPU busy time (sum of step durations).", registry=r
        )
        self.max_lag = Gauge("sim:step_lag_max_seconds", "Largest step lag since start.", registry=r)
        self._max_lag = 0.0

    def observe_step(self, duration_s: float, lag_s: float) -> None:
        self.steps.inc()
        self.busy.inc(duration_s)
        self.step_lag.observe(max(lag_s, 0.0))
        if lag_s > self._max_lag:
            self._max_lag = lag_s
            self.max_lag.set(lag_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
