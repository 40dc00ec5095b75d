"""`expert-router report RUN_DIR [--out DIR]` on the fixture: self-contained HTML, Markdown, clear errors."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from system.cli import main

FIXTURE_RUN = Path(__file__).resolve().parents[1] / "fixtures" / "results" / "fixture" / "run-1"


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    # the report writes into RUN_DIR by default: never into the committed fixture
    dst = tmp_path / "fixture" / "run-1"
    shutil.copytree(FIXTURE_RUN, dst)
    return dst


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("expert-router")
    return [str(script)] if script.exists() else [sys.executable, "-m", "system.cli"]


def test_console_script_writes_self_contained_html_and_markdown(run_dir: Path) -> None:
    out = subprocess.run([*_cli(), "report", str(run_dir)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    html_path = Path(out.stdout.strip().splitlines()[-1])
    assert html_path == run_dir / "report.html"
    html = html_path.read_text()
    # self-contained: every figure embedded, nothing fetched from elsewhere
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,[A-Za-z0-9+/=]{1000,}"', html)) == 7
    assert not re.search(r'(src|href)="https?://', html)
    # the A vs B table with CIs: routed wins tok/s at 10 users; 50 users is flagged (failed requests)
    assert "<th" in html and "Δ tok/s 95 % CI" in html and "TTFT p99" in html
    row10 = re.search(r'<tr class="win"><td[^>]*>10</td>(.*?)</tr>', html)
    assert row10 and ">routed<" in row10.group(1)
    row50 = re.search(r"<tr><td[^>]*>50</td>(.*?)</tr>", html)
    assert row50 and ">flagged<" in row50.group(1)
    # verdict sentences from the numbers; flagged steps named; config and environment from the manifest
    assert "Crossover routed vs single: routed serves more output tok/s than single from 10 users on" in html
    assert "Kept out of every claim (flagged): routed at 50 users (few_requests_p99, errors)" in html
    assert "1 incomplete step(s)" in html
    assert "fixture-host" in html and "&#34;slos&#34;" in html
    # the pooled chunk-gap column is not called ITL
    assert "Chunk gap p50" in html and "ITL p50" not in html
    md = (run_dir / "report.md").read_text()
    assert "| Load | A | B | Tok/s A | Tok/s B | Δ tok/s 95 % CI | Tok/s |" in md
    assert "| 10 | routed | single | 13.2 | 9.0 |" in md
    assert "![" in md and (run_dir / "report_files" / "throughput_vs_users.png").stat().st_size > 0
    # summary.json beside the report, and the console table before the path
    doc = json.loads((run_dir / "summary.json").read_text())
    assert doc["verdict"]["crossover"] == 10.0
    assert "tok/s [95% CI]" in out.stdout


def test_plain_records_dir_and_compare(run_dir: Path, tmp_path: Path) -> None:
    records = run_dir / "routed" / "users=10" / "rep=0" / "records"
    res = CliRunner().invoke(main, ["report", str(records), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "rep" / "summary.json").read_text())
    (row,) = doc["steps"]
    # 20 successful requests of 6 tokens each; users = distinct user ids (10)
    assert row["configuration"] == "records" and row["load"] == 10 and row["requests"] >= 20
    res = CliRunner().invoke(
        main, ["compare", str(run_dir), str(run_dir), "--json", str(tmp_path / "ab.json")]
    )
    assert res.exit_code == 0, res.output
    assert "## A:routed vs B:routed (users)" in res.output
    ab = json.loads((tmp_path / "ab.json").read_text())
    rows = [r for p in ab["pairs"] for r in p["rows"]]
    # a run against itself: every difference is zero and nothing is a win
    assert rows and all(r["verdict"] in ("not distinguishable", "flagged") for r in rows)
    assert all(p["crossover"] is None for p in ab["pairs"])


def test_out_dir_leaves_run_dir_alone(run_dir: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "elsewhere"
    res = CliRunner().invoke(main, ["report", str(run_dir), "--out", str(out_dir)])
    assert res.exit_code == 0, res.output
    assert res.output.strip().splitlines()[-1] == str(out_dir / "report.html")
    assert (out_dir / "report.md").is_file() and (out_dir / "report_files" / "latency_cdf.svg").is_file()
    assert not (run_dir / "report.html").exists()


def test_no_complete_steps_is_a_clear_error(tmp_path: Path) -> None:
    run = tmp_path / "exp" / "run"
    shutil.copytree(FIXTURE_RUN / "single" / "users=50" / "rep=1", run / "single" / "users=50" / "rep=1")
    res = CliRunner().invoke(main, ["report", str(run)])
    assert res.exit_code == 1
    assert "no complete steps" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["report", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_report_without_gpu_data_says_so(run_dir: Path) -> None:
    for f in run_dir.rglob("gpu.csv"):
        f.write_text("ts,gpu,util_pct,mem_used_mb,mem_total_mb,power_w,sm_clock_mhz,temp_c\n")
    res = CliRunner().invoke(main, ["report", str(run_dir)])
    assert res.exit_code == 0, res.output
    html = (run_dir / "report.html").read_text()
    assert "No GPU data" in html
    assert "Mean GPU utilisation" not in html
