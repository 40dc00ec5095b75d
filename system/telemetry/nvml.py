"""NVML GPU sampler (`nvidia-ml-py`, `import pynvml`): utilisation, memory, power, SM clock, temperature."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from system.telemetry.base import CsvSampler

GPU_HEADER = ("ts", "gpu", "util_pct", "mem_used_mb", "mem_total_mb", "power_w", "sm_clock_mhz", "temp_c")
_MB = 1024 * 1024


def _load_nvml() -> tuple[Any, str]:
    """(pynvml module, "") after nvmlInit, or (None, reason) when there is no usable NVML."""
    try:
        import pynvml
    except ImportError as e:
        return None, f"no GPU: pynvml not importable ({e})"
    try:
        pynvml.nvmlInit()
    except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return None, f"no GPU: NVML init failed ({type(e).__name__}: {e})"
    return pynvml, ""


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _safe(fn: Callable[[], float]) -> float:
    # some boards do not report power or clocks (NVMLError_NotSupported): that column is NaN, the rest stays
    try:
        return float(fn())
    except Exception:
        return math.nan


def gpu_inventory() -> dict[str, Any]:
    """GPU names, memory and driver for the manifest; {"gpus": [], "note": "no GPU: ..."} without NVML."""
    nv, reason = _load_nvml()
    if nv is None:
        return {"driver": None, "gpus": [], "note": reason}
    try:
        gpus = []
        for i in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            gpus.append(
                {
                    "index": i,
                    "name": _text(nv.nvmlDeviceGetName(h)),
                    "mem_total_mb": round(nv.nvmlDeviceGetMemoryInfo(h).total / _MB),
                }
            )
        driver = _text(nv.nvmlSystemGetDriverVersion())
        return {"driver": driver, "gpus": gpus, "note": "" if gpus else "no GPU: NVML reports 0 devices"}
    except Exception as e:
        return {"driver": None, "gpus": [], "note": f"no GPU: NVML query failed ({type(e).__name__}: {e})"}
    finally:
        with contextlib.suppress(Exception):
            nv.nvmlShutdown()


class GpuSampler(CsvSampler):
    """Samples every visible GPU (or `indices`, NVML numbering) at `interval_s` into gpu.csv.

    Without NVML (no driver, no GPU, package missing) `note` says why, the CSV has only its header and no
    thread runs: the experiment goes on.
    """

    HEADER = GPU_HEADER

    def __init__(
        self, path: str | Path, interval_s: float = 1.0, indices: Sequence[int] | None = None
    ) -> None:
        super().__init__(path, interval_s)
        self.indices = list(indices) if indices is not None else None
        self.note = ""
        self._nv: Any = None
        self._handles: list[tuple[int, Any]] = []

    def setup(self) -> None:
        nv, reason = _load_nvml()
        if nv is None:
            self.note = reason
            return
        try:
            count = nv.nvmlDeviceGetCount()
            wanted = self.indices if self.indices is not None else list(range(count))
            self._handles = [(i, nv.nvmlDeviceGetHandleByIndex(i)) for i in wanted if 0 <= i < count]
        except Exception as e:
            self.note = f"no GPU: NVML query failed ({type(e).__name__}: {e})"
            self._handles = []
        if not self._handles and not self.note:
            self.note = "no GPU: NVML reports 0 devices"
        if self._handles:
            self._nv = nv
        else:
            with contextlib.suppress(Exception):
                nv.nvmlShutdown()

    @property
    def active(self) -> bool:
        return self._nv is not None

    def sample(self) -> list[list[Any]]:
        import time

        nv = self._nv
        ts = time.time()
        rows = []
        for i, h in self._handles:
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            rows.append(
                [
                    round(ts, 3),
                    i,
                    _safe(lambda h=h: nv.nvmlDeviceGetUtilizationRates(h).gpu),
                    round(mem.used / _MB, 1),
                    round(mem.total / _MB, 1),
                    _safe(lambda h=h: nv.nvmlDeviceGetPowerUsage(h) / 1000.0),  # mW -> W
                    _safe(lambda h=h: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)),
                    _safe(lambda h=h: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
                ]
            )
        return rows

    def teardown(self) -> None:
        if self._nv is not None:
            with contextlib.suppress(Exception):
                self._nv.nvmlShutdown()
            self._nv = None
