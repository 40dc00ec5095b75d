"""Telemetry: NVML GPU sampler, process CPU/RSS sampler and Prometheus scraper."""
