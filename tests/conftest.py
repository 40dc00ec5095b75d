"""Shared fixtures: loopback ports, a temp dir, markers that skip without a GPU or vLLM."""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest

from system.processes import free_port


def _has_nvml_gpu() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        n = pynvml.nvmlDeviceGetCount()
        pynvml.nvmlShutdown()
        return n > 0
    except Exception:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="no NVIDIA GPU / NVML on this machine")
    skip_vllm = pytest.mark.skip(reason="vllm is not installed on this machine")
    has_gpu = _has_nvml_gpu()
    has_vllm = shutil.which("vllm") is not None
    skip_tf = pytest.mark.skip(
        reason="torch/transformers not importable and EXPERT_ROUTER_TRANSFORMERS_PYTHON unset"
    )
    has_tf = bool(os.environ.get("EXPERT_ROUTER_TRANSFORMERS_PYTHON")) or all(
        importlib.util.find_spec(m) is not None for m in ("torch", "transformers")
    )
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)
        if "vllm" in item.keywords and not has_vllm:
            item.add_marker(skip_vllm)
        if "transformers" in item.keywords and not has_tf:
            item.add_marker(skip_tf)


@pytest.fixture
def port() -> int:
    return free_port()


def require_speedups() -> object:
    """The C extension (system/_speedups.c), imported directly (EXPERT_ROUTER_SPEEDUPS does not hide it).
    Skips only where no C compiler could have built it: where one is, a missing module fails the test, so a
    broken build cannot pass CI on the pure-Python paths alone."""
    try:
        from system import _speedups
    except ImportError as e:
        if shutil.which(os.environ.get("CC", "cc")) is None:
            pytest.skip(f"no C compiler, so no system._speedups: {e}")
        pytest.fail(f"system._speedups is not built although a C compiler is here (pip install -e .): {e}")
    return _speedups


@pytest.fixture(params=["c", "python"])
def body_reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test with each reader of chunked upstream bodies: the C tracker and httptools."""
    from system import speedups

    if request.param == "c":
        monkeypatch.setattr(speedups, "ChunkedBody", require_speedups().ChunkedBody)  # type: ignore[attr-defined]
    else:
        monkeypatch.setattr(speedups, "ChunkedBody", None)
    return str(request.param)
