"""Statistics of `bench gateway` over repetitions: means with 95 % CIs, paired ratios and target verdicts."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

MET, MISSED, INCONCLUSIVE = "met", "missed", "inconclusive"


def ci(values: list[float]) -> dict[str, Any]:
    """Mean and 95 % t-interval of independent repetitions (no interval from fewer than 2)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    out: dict[str, Any] = {"n": len(v), "values": [round(float(x), 4) for x in v]}
    if not len(v):
        return out
    out["mean"] = round(float(v.mean()), 4)
    if len(v) >= 2:
        half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
        out["lo"], out["hi"] = round(out["mean"] - half, 4), round(out["mean"] + half, 4)
    return out


def ratio_ci(num: list[float], den: list[float]) -> dict[str, Any]:
    """Geometric mean of the paired per-repetition ratios num/den, with a 95 % t-interval on their logs."""
    pairs = [(a, b) for a, b in zip(num, den, strict=True) if a and b and a > 0 and b > 0]
    logs = [math.log(a / b) for a, b in pairs]
    out: dict[str, Any] = {"n": len(logs), "values": [round(a / b, 4) for a, b in pairs]}
    if not logs:
        return out
    c = ci(logs)
    out["ratio"] = round(math.exp(c["mean"]), 4)
    if "lo" in c:
        out["lo"], out["hi"] = round(math.exp(c["lo"]), 4), round(math.exp(c["hi"]), 4)
    return out


def judge_upper(est: dict[str, Any], target: float) -> str:
    """A target of the form `value <= target`: met when the whole CI is below it, missed when above."""
    if "lo" not in est:
        return INCONCLUSIVE
    if est["hi"] <= target:
        return MET
    if est["lo"] > target:
        return MISSED
    return INCONCLUSIVE


def judge_lower(est: dict[str, Any], target: float) -> str:
    """A target of the form `value >= target`."""
    if "lo" not in est:
        return INCONCLUSIVE
    if est["lo"] >= target:
        return MET
    if est["hi"] < target:
        return MISSED
    return INCONCLUSIVE


def judge_ttft_ratio(ours: list[float], peer: list[float], factor: float, drift_ms: float) -> dict[str, Any]:
    """`ours <= factor x peer` for added TTFT (ms), judged on the paired margin factor*peer - ours.

    A ratio of two added latencies near zero is meaningless (a peer at -0.1 ms), so the verdict uses the
    margin in ms: met when its CI is above 0 *and* the margin exceeds the run's direct-vs-direct drift,
    missed when its CI is below 0 and the shortfall exceeds the drift, inconclusive otherwise."""
    margins = [factor * p - o for o, p in zip(ours, peer, strict=True)]
    m = ci(margins)
    po, pp = ci(ours), ci(peer)
    res: dict[str, Any] = {
        "target": f"ours <= {factor:g} x vllm-router",
        "margin_ms": m,
        "drift_ms": round(drift_ms, 4),
        "ratio_of_means": (
            round(po["mean"] / pp["mean"], 4) if pp.get("mean") and pp["mean"] > 0 and "mean" in po else None
        ),
    }
    if "lo" not in m:
        res["verdict"] = INCONCLUSIVE
    elif m["lo"] > 0 and m["mean"] > drift_ms:
        res["verdict"] = MET
    elif m["hi"] < 0 and -m["mean"] > drift_ms:
        res["verdict"] = MISSED
    else:
        res["verdict"] = INCONCLUSIVE
    return res


def judge_cpu_ratio(ours: list[float], peer: list[float], target: float) -> dict[str, Any]:
    r = ratio_ci(ours, peer)
    r["target"] = f"ours/vllm-router <= {target:g}"
    if "lo" not in r:
        r["verdict"] = INCONCLUSIVE
    elif r["hi"] <= target:
        r["verdict"] = MET
    elif r["lo"] > target:
        r["verdict"] = MISSED
    else:
        r["verdict"] = INCONCLUSIVE
    return r
