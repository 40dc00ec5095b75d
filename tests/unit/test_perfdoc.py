"""docs/PERFORMANCE.md is generated from results/benchmarks/*.json (analysis.perfdoc) and stays in sync."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import click
import pytest

from analysis import perfdoc
from system.bench.cli import BENCHES, bench

ROOT = Path(__file__).resolve().parents[2]


def test_performance_doc_is_in_sync_with_the_committed_json() -> None:
    text = perfdoc.DOC.read_text()
    assert {"targets", "accuracy", "gateway", "sim", "soak", "classifier"} <= set(perfdoc.blocks(text))
    assert perfdoc.render(text, perfdoc.load_results()) == text, "run `python -m analysis.perfdoc`"
    assert perfdoc.main(["--check"]) == 0


def test_a_changed_json_figure_changes_the_doc_and_only_inside_blocks() -> None:
    results = perfdoc.load_results()
    text = "intro 27.4 stays\n<!-- generated:targets -->\nHAND-COPIED\n<!-- /generated:targets -->\ntail\n"
    before = perfdoc.render(text, results)
    assert "| classifier `predict()` p50, 500-character prompt | ≤ 100 µs | 27.4 µs | met (1 run) |" in before
    slower = copy.deepcopy(results)
    slower["classifier"]["predict_500_chars"]["p50_us"] = 123.4
    after = perfdoc.render(text, slower)
    assert "| 123.4 µs | missed (1 run) |" in after
    assert after.startswith("intro 27.4 stays\n") and after.endswith("<!-- /generated:targets -->\ntail\n")
    assert "HAND-COPIED" not in after


def test_gateway_blocks_print_the_runs_own_classifier_timing() -> None:
    """Two gateway runs are compared across days only through a host-speed reference printed beside them."""
    results = copy.deepcopy(perfdoc.load_results())
    doc = results["gateway_cpu"]
    assert doc, "results/benchmarks/gateway_cpu.json is committed"
    doc["classifier_predict_us_p50"] = 98.76
    text = perfdoc.render("<!-- generated:gateway_cpu -->\n<!-- /generated:gateway_cpu -->\n", results)
    assert "`predict` p50 98.76 µs" in text


def test_the_targets_table_carries_the_repeated_cpu_runs_verdicts() -> None:
    results = copy.deepcopy(perfdoc.load_results())
    v = results["gateway_cpu"]["verdicts"]["cpu_per_request_le_1_2x_vllm_router_100"]
    v.update(ratio=1.1, lo=1.05, hi=1.15, verdict="met")
    text = perfdoc.render("<!-- generated:targets -->\n<!-- /generated:targets -->\n", results)
    row = next(x for x in text.splitlines() if "100 streams (`gateway_cpu.json`)" in x and "≤ 1.2×" in x)
    assert "1.10 [1.05, 1.15]×" in row and "met (10 reps, 95 % CI)" in row


def test_unknown_block_and_stale_doc_are_reported(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="nope"):
        perfdoc.render("<!-- generated:nope -->\nx\n<!-- /generated:nope -->\n", {})
    doc = tmp_path / "PERF.md"
    doc.write_text("<!-- generated:soak -->\nhand-copied 1,234\n<!-- /generated:soak -->\n")
    assert perfdoc.main(["--doc", str(doc), "--check"]) == 1
    assert perfdoc.main(["--doc", str(doc)]) == 0
    assert "hand-copied" not in doc.read_text() and "180,614" in doc.read_text()


def _path_defaults(cmd: click.Command) -> list[str]:
    return [
        str(p.default)
        for p in cmd.params
        if isinstance(p, click.Option) and p.name in ("out", "md", "markdown_out") and p.default
    ]


@pytest.mark.parametrize("name", sorted(BENCHES))
def test_bench_defaults_never_point_at_tracked_files(name: str) -> None:
    cmd = bench.get_command(click.Context(bench), name)
    defaults = _path_defaults(cmd)
    assert defaults, f"bench {name} has no --out"
    for d in defaults:
        assert d.startswith("results/benchmarks/local/"), d
        tracked = subprocess.run(["git", "ls-files", "--error-unmatch", d], cwd=ROOT, capture_output=True)
        assert tracked.returncode != 0, f"{d} is tracked"
        ignored = subprocess.run(["git", "check-ignore", "-q", d], cwd=ROOT)
        assert ignored.returncode == 0, f"{d} is not git-ignored"
