"""Shared fixtures: loopback ports, a temp dir, markers that skip without a GPU or vLLM."""

from __future__ import annotations

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
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)
        if "vllm" in item.keywords and not has_vllm:
            item.add_marker(skip_vllm)


@pytest.fixture
def port() -> int:
    return free_port()
