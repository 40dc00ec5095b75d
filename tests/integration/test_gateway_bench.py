"""`expert-router bench gateway` end to end at toy scale: it runs, and writes the contract keys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_bench_gateway_smoke(tmp_path: Path) -> None:
    out, md = tmp_path / "gateway.json", tmp_path / "gateway.md"
    cmd = [sys.executable, "-m", "system.cli", "bench", "gateway", "--users", "1,4", "--seconds", "1.5"]
    cmd += ["--warmup", "0.5", "--peers", "", "--reps", "2", "--ttft-ms", "30", "--itl-ms", "5"]
    cmd += ["--chunks", "6"]
    cmd += ["--out", str(out), "--md", str(md), "--options", "aiohttp"]
    subprocess.run(cmd, check=True, timeout=230, capture_output=True)
    doc = json.loads(out.read_text())
    for n in (1, 4):
        for key in ("added_ttft_p50_ms", "added_ttft_p99_ms", "throughput_kept", "direct_ttft_p50_ms"):
            assert f"{key}_{n}" in doc, key
        assert 30 <= doc[f"direct_ttft_p50_ms_{n}"] < 60  # the fake's 30 ms TTFT, measured
        assert doc[f"errors_{n}"] == 0
        assert 0.8 < doc[f"throughput_kept_{n}"] < 1.2
        assert doc[f"opt_aiohttp_errors_{n}"] == 0  # the option arm ran alongside
        lvl = doc["levels"][str(n)]
        assert lvl["direct"]["ttft_p50_ms"]["n"] == 2  # one (pooled) direct figure per repetition
        assert "lo" in lvl["arms"]["gateway"]["added_ttft_p50_ms"]  # a CI from the 2 repetitions
    assert 0 < doc["classifier_predict_us_p50"] < 5000
    # 2 reps x 2 levels x (direct, gateway, gateway_aiohttp, direct)
    assert len(doc["runs"]) == 16
    assert {r["arm"] for r in doc["runs"]} == {"direct", "gateway", "gateway_aiohttp"}
    assert doc["targets_met"] == {}  # no vllm-router in this run: nothing to judge against
    text = md.read_text()
    assert "| 4 | ours |" in text and "| 4 | ours, aiohttp |" in text
