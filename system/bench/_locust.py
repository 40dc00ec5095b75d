"""Compatibility alias: Locust is launched by the runner (`system.runner.locust`); benchmarks use that."""

from __future__ import annotations

from system.runner.locust import LocustResult, build_command, locustfile_path, run_locust

__all__ = ["LocustResult", "build_command", "locustfile_path", "run_locust"]
