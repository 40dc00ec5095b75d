"""Live co-location: sim experts on one simulated GPU share one sim process; its telemetry feeds gpu.csv."""

from __future__ import annotations

import csv
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from system.runner.config import Configuration
from system.runner.stack import Stack
from system.telemetry.simgpu import SimGpuSampler


def _conf(share: bool, gpus: tuple[int, int] = (0, 0)) -> Configuration:
    return Configuration.model_validate(
        {
            "name": "coloc",
            "topology": "routed",
            "share_gpus": share,
            "gateway": {"policy": {"kind": "round_robin"}},
            "experts": [
                {
                    "name": f"e{i}",
                    "engine": {"kind": "sim", "profile": "debug", "gpus": [g], "memory_fraction": 0.4},
                }
                for i, g in enumerate(gpus)
            ],
        }
    )


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _complete(base: str, model: str, n: int) -> None:
    body = json.dumps({"model": model, "prompt": "hello " * 50, "max_tokens": n, "ignore_eos": True}).encode()
    req = urllib.request.Request(f"{base}/v1/completions", body, {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert json.loads(r.read())["usage"]["completion_tokens"] == n


def test_same_gpu_without_share_gpus_is_refused() -> None:
    with pytest.raises(ValueError, match="GPU 0 is given to both"):
        _conf(share=False)


def test_colocated_sims_share_one_process_and_one_gpu_clock(tmp_path: Path) -> None:
    conf = _conf(share=True)
    with Stack(conf, work_dir=tmp_path, seed=1) as stack:
        experts = [p for p in stack.planned if p.role == "expert"]
        assert [p.hosted_by for p in experts] == [None, "e0"]
        assert set(stack.procs) == {"e0", "gateway"}  # e1 has no process of its own
        urls = [p.launch.base_url for p in experts]
        assert [_get(f"{u}/v1/models")["data"][0]["id"] for u in urls] == ["e0", "e1"]
        assert stack.sim_gpu_urls() == [urls[0]]
        sampler = SimGpuSampler(tmp_path / "gpu.csv", stack.sim_gpu_urls(), interval_s=0.2).start()
        try:
            before = _get(f"{urls[0]}/sim/gpu")["busy_s"]
            _complete(urls[1], "e1", 20)  # work on the hosted engine moves the shared GPU's counter
            mid = _get(f"{urls[0]}/sim/gpu")
            assert mid["busy_s"] > before
            assert _get(f"{urls[1]}/sim/gpu")["busy_s"] == pytest.approx(mid["busy_s"])
            _complete(urls[0], "e0", 20)
            time.sleep(0.5)
        finally:
            sampler.stop()
    rows = list(csv.DictReader((tmp_path / "gpu.csv").open()))
    assert rows and {r["source"] for r in rows} == {"sim"}
    assert {r["gpu"] for r in rows} == {"0"}
    assert max(float(r["util_pct"]) for r in rows) > 0
    # two engines x 0.4 of the debug GPU's memory, preallocated as a real engine does
    assert float(rows[0]["mem_used_mb"]) == pytest.approx(0.8 * float(rows[0]["mem_total_mb"]), rel=1e-3)
    assert all(float(r["power_w"]) >= 70.0 for r in rows)
