"""The H100 transformers-serve reference measurements (results/reference/h100-transformers-serve/)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "results" / "reference" / "h100-transformers-serve"
OUTPUT_TOKENS = 128  # the reference client's max_tokens
# what the fitter compares: relative metrics (log error) and GPU utilisation (percentage points)
METRICS = ("tok_per_s", "ttft_p50_ms", "tpot_p50_ms")
UTIL = "gpu_util_mean"


@dataclass(frozen=True)
class RefStep:
    """One measured step: one engine instance, closed loop, `n` requests, at most `conc` in flight."""

    run: str
    shape: str
    cuda_graph: bool
    conc: int
    n: int
    measured: dict[str, float]  # METRICS + UTIL + ttft_p99_ms + e2e_p50_s; NaN when not measured

    @property
    def key(self) -> str:
        return f"{self.run}/c{self.conc}"


def load_reference(directory: Path = REFERENCE_DIR) -> tuple[list[RefStep], dict[int, list[int]]]:
    """(steps, input lengths by request count) from single_instance.json and input_lengths.json."""
    rows = json.loads((directory / "single_instance.json").read_text())
    lengths = {
        int(k): [int(x) for x in v]
        for k, v in json.loads((directory / "input_lengths.json").read_text()).items()
    }
    steps = []
    for r in rows:
        if r.get("instances", 1) != 1:
            continue
        meas = {
            m: (float(r[m]) if r.get(m) is not None else math.nan)
            for m in (*METRICS, UTIL, "ttft_p99_ms", "e2e_p50_s")
        }
        steps.append(RefStep(r["run"], r["shape"], bool(r["cuda_graph"]), int(r["conc"]), int(r["n"]), meas))
    return steps, lengths
