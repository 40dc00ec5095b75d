"""`expert-router bench gateway` end to end at toy scale: it runs, and writes the contract keys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_bench_gateway_smoke(tmp_path: Path) -> None:
    out, md = tmp_path / "gateway.json", tmp_path / "gateway.md"
    cmd = [sys.executable, "-m", "system.cli", "bench", "gateway", "--users", "1,4", "--seconds", "1.5"]
    cmd += ["--warmup", "0.5", "--peers", "", "--ttft-ms", "30", "--itl-ms", "5", "--chunks", "6"]
    cmd += ["--out", str(out), "--md", str(md)]
    subprocess.run(cmd, check=True, timeout=110, capture_output=True)
    doc = json.loads(out.read_text())
    for n in (1, 4):
        for key in ("added_ttft_p50_ms", "added_ttft_p99_ms", "throughput_kept", "direct_ttft_p50_ms"):
            assert f"{key}_{n}" in doc, key
        assert 30 <= doc[f"direct_ttft_p50_ms_{n}"] < 60  # the fake's 30 ms TTFT, measured
        assert doc[f"errors_{n}"] == 0
        assert 0.8 < doc[f"throughput_kept_{n}"] < 1.2
    assert 0 < doc["classifier_predict_us_p50"] < 5000
    assert "| 4 |" in md.read_text()
