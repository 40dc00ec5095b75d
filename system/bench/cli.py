"""`expert-router bench ...`: each benchmark lives in its own module, imported only when run."""

from __future__ import annotations

import importlib

import click

BENCHES: dict[str, tuple[str, str]] = {
    "sim": ("system.bench.sim:sim", "Streamed tokens/s and concurrent streams one sim process sustains."),
    "classifier": ("system.bench.classifier:classifier", "Classifier predict latency and predictions/s."),
    "gateway": ("system.bench.gateway:gateway", "Added TTFT, throughput kept: gateway vs direct vs peers."),
    "accuracy": ("system.bench.accuracy:accuracy", "Locust-measured TTFT/E2E minus the sim's ground truth."),
    "soak": ("system.bench.soak:soak", "Long run through the gateway: errors, RSS, fds, p99 drift."),
    "loadgen": ("system.bench.loadgen:loadgen", "Load one Locust worker sustains at the accuracy target."),
    "records": (
        "system.bench.records_scale:records",
        "Results-dir size, analysis time/memory per M records.",
    ),
}


class _LazyBench(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(BENCHES)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in BENCHES:
            return None
        mod, attr = BENCHES[name][0].split(":")
        return getattr(importlib.import_module(mod), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Benchmarks"):
            formatter.write_dl([(n, BENCHES[n][1]) for n in BENCHES])


@click.group(cls=_LazyBench)
def bench() -> None:
    """Benchmarks: each writes a JSON result under results/benchmarks/ (see docs/PERFORMANCE.md)."""
