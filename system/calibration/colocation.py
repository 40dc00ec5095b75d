"""Predicted routed/single ratios for co-located experts, with the reference protocol (checkable on a GPU)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from system.calibration.reference import OUTPUT_TOKENS, REFERENCE_DIR
from system.engines.sim.colocate import DEFAULT_SWITCH_S, predict
from system.engines.sim.profilefiles import load_profile_file
from system.engines.sim.profiles import CALIBRATED_DIR

OUT = Path("results/reference/calibration/colocation-predictions.json")
# the reference protocol: concurrency -> requests (closed loop, fixed total), prompts from input_lengths.json
PROTOCOL = {1: 6, 64: 256, 256: 512}
KEYS = ("tok_per_s", "ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "e2e_p50_s", "gpu_util_mean")


def colocation_predictions(
    ks: tuple[int, ...] = (2, 4), out: Path = OUT, command: str = ""
) -> dict[str, Any]:
    """K x 1b on one GPU (memory split evenly: 0.9 / K each) against 1 x 1b and 1 x 8b on the whole GPU."""
    lengths = json.loads((REFERENCE_DIR / "input_lengths.json").read_text())
    one_b = load_profile_file(CALIBRATED_DIR / "transformers-cb-h100-llama-1b.json")
    eight_b = load_profile_file(CALIBRATED_DIR / "transformers-cb-h100-llama-8b.json")
    rows = []
    for conc, n in PROTOCOL.items():
        lens = lengths[str(n)]
        base = {
            "1x1b": predict(
                one_b, concurrency=conc, input_lengths=lens, output_tokens=OUTPUT_TOKENS
            ).as_dict(),
            "1x8b": predict(
                eight_b, concurrency=conc, input_lengths=lens, output_tokens=OUTPUT_TOKENS
            ).as_dict(),
        }
        for k in ks:
            frac = one_b.gpu_memory_utilization / k
            prof = one_b.with_overrides(gpu_memory_utilization=frac)
            routed = predict(
                [prof] * k, concurrency=conc, input_lengths=lens, output_tokens=OUTPUT_TOKENS
            ).as_dict()
            row: dict[str, Any] = {
                "concurrency": conc,
                "requests": n,
                "colocated": k,
                "memory_fraction": frac,
            }
            row["routed"] = {m: routed[m] for m in KEYS}
            for name, single in base.items():
                row[f"single_{name}"] = {m: single[m] for m in KEYS}
                row[f"ratio_vs_{name}"] = {
                    m: routed[m] / single[m] for m in KEYS if m != "gpu_util_mean" and single[m]
                }
            rows.append(row)
    rep = {
        "what": "predicted, not measured: K x transformers-cb-h100-llama-1b sharing one H100 (time-sliced, "
        "no MPS) vs one instance of the 1b or the 8b profile on the whole GPU; requests round-robin "
        "over the K instances, at most `concurrency` in flight in total, 128 output tokens, prompts from "
        "results/reference/h100-transformers-serve/input_lengths.json",
        "command": command or f"expert-router calibrate reference  # writes {OUT}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "switch_s": DEFAULT_SWITCH_S,
        "profiles": {"1b": one_b.provenance, "8b": eight_b.provenance},
        "rows": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rep, indent=1) + "\n")
    return rep
