"""analysis.compare: ratios, the crossover rule, and findings written from the numbers."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from analysis.compare import NEVER, compare, crossover, findings


def _summary(
    routed_tps: list[float], single_tps: list[float], users: list[int] | None = None
) -> pd.DataFrame:
    users = users or [1, 10, 50, 100][: len(routed_tps)]
    rows = []
    for config, tps in (("routed", routed_tps), ("single", single_tps)):
        for u, t in zip(users, tps, strict=True):
            ttft = 100.0 if config == "routed" else 200.0
            rows.append(
                {
                    "config": config,
                    "topology": config,
                    "users": u,
                    "throughput_rps": t / 10,
                    "output_tps": t,
                    "goodput_rps": t / 20,
                    "ttft_p50_ms": ttft,
                    "ttft_p99_ms": 3 * ttft,
                    "tpot_p50_ms": 10.0,
                    "e2e_p50_ms": 2 * ttft,
                    "e2e_p99_ms": 4 * ttft,
                    "error_rate": 0.0,
                    "experts": 4.0 if config == "routed" else 1.0,
                    "expert_max_share": 0.25,
                    "expert_cv": 0.0,
                    "gpu_util_pct": float("nan"),
                    "ttft_error_p50_ms": float("nan"),
                    "ttft_error_p99_ms": float("nan"),
                }
            )
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    ("routed", "single", "expected"),
    [
        ([1, 5, 9, 20], [2, 4, 8, 10], 10),  # wins from 10 on
        ([3, 5, 9, 20], [2, 4, 8, 10], 1),  # wins everywhere
        ([1, 5, 7, 9], [2, 4, 8, 10], NEVER),  # led at 10, lost at the top load
        ([1, 1, 1, 20], [2, 4, 8, 10], 100),  # only the last
        ([1, 2, 3, 4], [2, 4, 8, 10], NEVER),
        ([2, 5, 9, 10], [2, 4, 8, 10], NEVER),  # a tie is not a win
    ],
)
def test_crossover_rule(routed: list[float], single: list[float], expected: int | str) -> None:
    cmp = compare(_summary(routed, single))
    assert crossover(cmp) == expected


def test_ratios_are_routed_over_single() -> None:
    cmp = compare(_summary([1, 5, 9, 20], [2, 4, 8, 10]))
    row = cmp.set_index("users").loc[100]
    assert row["output_tps_x"] == pytest.approx(2.0)
    assert row["throughput_x"] == pytest.approx(2.0)
    assert row["ttft_p50_x"] == pytest.approx(0.5)
    assert row["ttft_p99_x"] == pytest.approx(0.5)
    assert row["e2e_p99_x"] == pytest.approx(0.5)
    assert cmp["routed_wins"].tolist() == [False, True, True, True]


def test_zero_denominator_gives_inf_or_nan() -> None:
    s = _summary([1, 5], [0, 0], users=[1, 10])
    s.loc[(s["config"] == "routed") & (s["users"] == 1), "output_tps"] = 0.0
    cmp = compare(s).set_index("users")
    assert math.isnan(cmp.loc[1, "output_tps_x"])
    assert math.isinf(cmp.loc[10, "output_tps_x"])


def test_only_common_user_counts_are_compared_and_unknown_pair_is_an_error() -> None:
    s = _summary([1, 5, 9], [2, 4, 8], users=[1, 10, 50])
    s = s[~((s["config"] == "single") & (s["users"] == 50))]
    assert compare(s)["users"].tolist() == [1, 10]
    with pytest.raises(ValueError, match="cannot compare"):
        compare(s, routed="routed", single="nope")


def test_findings_quote_the_numbers() -> None:
    s = _summary([1, 5, 9, 23], [2, 4, 8, 10])
    text = " ".join(findings(s, compare(s)))
    assert "At 100 users routed served 2.3× the output tokens/s of single (23.0 tok/s vs 10.0 tok/s)" in text
    assert "0.50× its p99 TTFT (300 ms vs 600 ms)" in text
    assert "routed wins on output tokens/s from 10 users on" in text
    assert "No request failed" in text
    lost = _summary([1, 5, 7, 9], [2, 4, 8, 10])
    text = " ".join(findings(lost, compare(lost)))
    assert "never overtakes single in output tokens/s up to 100 users, although it led at 10 users" in text


def test_findings_without_a_pair_say_so() -> None:
    s = _summary([1, 2], [1, 2], users=[1, 10])
    routed_only = s[s["topology"] == "routed"]
    cmp = compare(routed_only)
    assert cmp.empty and crossover(cmp) == NEVER
    assert (
        findings(routed_only, cmp)[0]
        == "No routed/single pair to compare: the results hold only routed (routed)."
    )
