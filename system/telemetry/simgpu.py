"""Simulated GPU telemetry: polls each sim's /sim/gpu and writes gpu.csv rows like NVML's, source "sim"."""

from __future__ import annotations

import json
import math
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from system.telemetry.base import CsvSampler
from system.telemetry.nvml import GPU_HEADER

SIM_GPU_HEADER = (*GPU_HEADER, "source") if "source" not in GPU_HEADER else GPU_HEADER


class SimGpuSampler(CsvSampler):
    """One row per simulated GPU per sample: utilisation over the last interval (busy kernel seconds of the
    simulated GPU / wall seconds), the memory the engine processes preallocate, power from utilisation
    (system/engines/sim/vgpu.py). Co-located engines share one GPU: give one base URL per simulated GPU.
    The first sample of a GPU reports utilisation since that sim started (no interval yet)."""

    HEADER = SIM_GPU_HEADER

    def __init__(
        self, path: str | Path, base_urls: Sequence[str], interval_s: float = 1.0, timeout_s: float = 2.0
    ) -> None:
        super().__init__(path, interval_s)
        self.base_urls = list(base_urls)
        self.timeout_s = timeout_s
        self._last: dict[str, tuple[float, float]] = {}

    @property
    def active(self) -> bool:
        return bool(self.base_urls)

    def _fetch(self, base: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"{base.rstrip('/')}/sim/gpu", timeout=self.timeout_s) as r:
            return json.loads(r.read())

    def sample(self) -> list[list[Any]]:
        rows = []
        for gpu_no, base in enumerate(self.base_urls):
            try:
                s = self._fetch(base)
            except Exception:  # a sim that went away: no row this time, the next sample retries
                continue
            prev = self._last.get(base)
            self._last[base] = (s["ts"], s["busy_s"])
            if prev is None or s["ts"] <= prev[0]:
                util = float(s["util_pct_since_start"])
            else:
                util = max(0.0, min(100.0, 100.0 * (s["busy_s"] - prev[1]) / (s["ts"] - prev[0])))
            power = s["idle_power_w"] + s["power_w_per_util"] * util / 100.0
            row: list[Any] = [round(s["ts"], 3), gpu_no, round(util, 1), round(s["mem_used_mb"], 1)]
            row += [round(s["mem_total_mb"], 1), round(power, 1), math.nan, math.nan]
            if "source" in self.HEADER:
                row.append("sim")
            rows.append(row)
        return rows
