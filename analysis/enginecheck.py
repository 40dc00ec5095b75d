"""`python -m analysis.enginecheck RUN_DIR`: windowed client tok/s against the engines' own token counters.

For every step: output tokens the client received inside [start + warmup, end] (analysis.window, requests
crossing the edges credited for their in-window chunks), the engines' `vllm:generation_tokens_total` over the
same window (metrics.csv, interpolated at the edges) and the relative difference; the old count (completed
requests' tokens) beside it. Exit 1 when a step is off by more than --tolerance (default 1 %).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from analysis.load import load_all
from analysis.window import engine_check


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--tolerance", type=float, default=0.01, help="max |client / engine - 1| per step")
    ap.add_argument("--json", type=Path, default=None, help="also write the table as JSON here")
    args = ap.parse_args(argv)
    data = load_all(args.run_dir)
    table = engine_check(data.records, data.metrics, data.steps)
    table["completed_rel_diff"] = table["completed_tokens"] / table["engine_tokens"] - 1.0
    print(table.to_string(index=False, float_format=lambda v: f"{v:,.4f}"))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        rows = table.astype(object).where(table.notna(), None).to_dict("records")
        manifest = data.manifest
        doc = {
            "benchmark": "tokens_window",
            "run": str(args.run_dir),
            "experiment": (manifest.get("config") or {}).get("name"),
            "started": manifest.get("started_ts"),
            "host": manifest.get("host"),
            "git": manifest.get("git"),
            "tolerance": args.tolerance,
            "max_abs_rel_diff": float(table["rel_diff"].abs().max()),
            "max_abs_completed_rel_diff": float(table["completed_rel_diff"].abs().max()),
            "steps": rows,
        }
        args.json.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    bad = table[~(table["rel_diff"].abs() <= args.tolerance)]
    if len(bad):
        print(f"{len(bad)} step(s) off by more than {args.tolerance:.1%} (or without an engine counter)")
        return 1
    print(f"every step within {args.tolerance:.1%} of the engine counter")
    return 0


if __name__ == "__main__":
    sys.exit(main())
