"""Profile JSON files, measured points (CSV, JSON, run dirs) and the `calibrate` / `sim --profile` CLIs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from system.calibration.calibrate import calibrate
from system.calibration.measured import PointsError, load_points, points_from_run, save_points
from system.engines.sim.cli import sim
from system.engines.sim.profilefiles import (
    ProfileFileError,
    load_profile_file,
    profile_from_dict,
    profile_to_dict,
    resolve_profile,
    save_profile,
)
from system.engines.sim.profiles import CALIBRATION_BASES, PROFILES, get_profile
from tests.fixtures.minirun import rec, write_config, write_manifest, write_step

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "calibration"


@pytest.mark.parametrize("name", ["debug", "llama3-70b-awq-h100-tp4", "transformers-cb-cpu-llama-tiny"])
def test_profile_json_round_trip(tmp_path: Path, name: str) -> None:
    prof = get_profile(name)
    path = save_profile(prof, tmp_path / "p.json", calibration={"mape": 0.1})
    assert load_profile_file(path) == prof
    assert resolve_profile(str(path)) == prof
    assert json.loads(path.read_text())["calibration"] == {"mape": 0.1}


def test_bad_profile_files_get_clear_errors(tmp_path: Path) -> None:
    good = profile_to_dict(get_profile("debug"))
    with pytest.raises(ProfileFileError, match="unknown field"):
        profile_from_dict({**good, "bogus": 1})
    with pytest.raises(ProfileFileError, match=r"hardware: unknown field\(s\) x"):
        profile_from_dict({**good, "hardware": {**good["hardware"], "x": 1}})  # type: ignore[dict-item]
    with pytest.raises(ProfileFileError, match="unknown quant"):
        profile_from_dict({**good, "quant": "int3"})
    with pytest.raises(ProfileFileError, match="needs 'hardware'"):
        profile_from_dict({"name": "x"})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ProfileFileError, match="cannot read"):
        load_profile_file(bad)
    res = CliRunner().invoke(sim, ["--profile", str(bad), "--port", "1"])
    assert res.exit_code == 2 and "cannot read profile file" in res.output
    res = CliRunner().invoke(sim, ["--profile", str(tmp_path / "missing.json"), "--port", "1"])
    assert res.exit_code == 2 and "missing.json" in res.output


def test_calibrated_profiles_are_registered_with_provenance() -> None:
    for name in (
        "transformers-cb-cpu-llama-tiny",
        "transformers-cb-h100-llama-1b",
        "transformers-cb-h100-llama-8b",
    ):
        p = PROFILES[name]
        assert p.fits and p.provenance.startswith("fitted to ")
        base = CALIBRATION_BASES[f"{name}-uncalibrated"]
        assert (p.hardware, p.model) == (base.hardware, base.model)
        assert p.step_overhead_s > 0
    # the reference README's shapes: 1.10 B and 7.24 B parameters
    assert round(PROFILES["transformers-cb-h100-llama-1b"].model.params / 1e7) == 110
    assert round(PROFILES["transformers-cb-h100-llama-8b"].model.params / 1e7) == 724
    # every registered profile says what backs it
    kinds = ("datasheet-derived", "fitted", "validated", "synthetic")
    assert all(p.provenance.split(" ")[0] in kinds for p in PROFILES.values())


def test_points_csv_and_json(tmp_path: Path) -> None:
    csv = tmp_path / "p.csv"
    csv.write_text(
        "users,ttft_p50_s,tpot_p50_s,output_tps,prompt_tokens_mean,output_tokens_mean,duration_s,warmup_s\n"
        "1,0.05,,79,64,128,30,6\n64,,0.03,1700,64,128,30,6\n"
    )
    m = load_points(csv)
    assert [p.users for p in m.points] == [1, 64]
    assert m.points[0].ttft_p50_s == 0.05 and math.isnan(m.points[0].tpot_p50_s)
    assert m.workload().pairs == ((64, 128),) and m.duration_s == 30 and m.warmup_s == 6
    again = load_points(save_points(m, tmp_path / "p.json"))
    assert again.points == m.points and again.samples == m.samples
    issue = load_points(FIXTURES / "h100-transformers-cb-issue8.json")
    assert [p.output_tps for p in issue.points] == [79.0, 1700.0, 1700.0]
    assert "AGGREGATE OUTPUT THROUGHPUT ONLY" in issue.notes
    for text, msg in [("users,x\n1,2\n", "prompt_tokens_mean"), ('{"points": []}', "non-empty")]:
        f = tmp_path / ("bad.json" if text.startswith("{") else "bad.csv")
        f.write_text(text)
        with pytest.raises(PointsError, match=msg):
            load_points(f)


def _run(tmp_path: Path) -> Path:
    run = tmp_path / "exp" / "run-1"
    write_manifest(run)
    write_config(run, "single", "single", ["s"])
    write_config(run, "routed", "routed", ["e0", "e1"])
    for users in (1, 2):
        recs = [
            rec(110 + i, ttft_s=0.01 * users, e2e_s=0.5, output_tokens=10, prompt_tokens=20 + i, expert="s")
            for i in range(5)
        ]
        # counted: transformers serve does not send [DONE]; not counted: a real failure
        recs.append(
            rec(116, success=False, error="stream ended without [DONE] after 9 chunk(s)", output_tokens=10)
        )
        recs.append(rec(117, success=False, error="HTTP 500", ttft_s=math.nan, output_tokens=0))
        write_step(run, "single", users, 0, recs, start_ts=100.0, end_ts=120.0, warmup_s=5.0)
    recs = [rec(110 + i, output_tokens=8, prompt_tokens=30, expert=f"e{i % 2}") for i in range(4)]
    write_step(run, "routed", 1, 0, recs, start_ts=100.0, end_ts=120.0, warmup_s=5.0)
    return run


def test_points_from_a_run_dir(tmp_path: Path) -> None:
    run = _run(tmp_path)
    m = points_from_run(run, "single")
    assert [p.users for p in m.points] == [1, 2]
    assert m.points[1].ttft_p50_s == pytest.approx(0.02)
    assert m.points[0].requests == 6  # 5 + the one without [DONE]
    assert m.points[0].output_tps == pytest.approx(60 / 15.0)  # 6 x 10 tokens over the 15 s window
    assert "2 in-window request(s) without `data: [DONE]`" in m.notes
    assert m.duration_s == 20.0 and m.warmup_s == 5.0 and m.engines == 1
    strict = points_from_run(run, "single", accept_missing_done=False)
    assert strict.points[0].requests == 5
    routed = points_from_run(run, "routed")
    assert routed.engines == 2 and sorted(s[2] for s in routed.samples) == [0, 1]
    with pytest.raises(PointsError, match="no complete steps"):
        points_from_run(run, "nope")


def test_calibrate_cli_writes_profile_and_report(tmp_path: Path) -> None:
    out = tmp_path / "prof" / "fitted.json"
    args = ["--points", str(FIXTURES / "h100-transformers-cb-issue8.json"), "--base"]
    args += [
        "transformers-cb-h100-llama-1b-uncalibrated",
        "--out",
        str(out),
        "--report",
        str(tmp_path / "rep"),
    ]
    args += ["--params", "step_overhead_s", "--max-evals", "12", "--random-starts", "2", "--starts", "1"]
    args += ["--seeds", "1", "--eval-seeds", "1", "--target-requests", "50"]
    res = CliRunner().invoke(calibrate, args)
    assert res.exit_code == 0, res.output
    assert "| **MAPE** |" in res.output and "output tok/s" in res.output
    prof = load_profile_file(out)
    assert prof.name == "fitted" and "issue 8" in prof.description
    doc = json.loads((tmp_path / "rep" / "fitted.report.json").read_text())
    assert doc["fitted"]["params"] == ["step_overhead_s"] and len(doc["rows"]) == 3
    assert doc["mape"]["ttft_p50_s"] is None  # not measured -> null, never NaN in JSON
    assert (tmp_path / "rep" / "fitted.report.md").read_text().startswith("# Calibration report: `fitted`")


def test_calibrate_cli_refuses_bad_input(tmp_path: Path) -> None:
    pts = str(FIXTURES / "h100-transformers-cb-issue8.json")
    res = CliRunner().invoke(calibrate, ["--base", "debug"])
    assert res.exit_code == 2 and "exactly one of" in res.output
    res = CliRunner().invoke(calibrate, ["--points", pts, "--base", "nope"])
    assert res.exit_code == 2 and "unknown sim profile" in res.output
    res = CliRunner().invoke(calibrate, ["--points", pts, "--base", "debug", "--params", "warp_speed"])
    assert res.exit_code == 2 and "warp_speed" in res.output
    run = _run(tmp_path)
    res = CliRunner().invoke(calibrate, ["--run", str(run), "--config", "nope", "--base", "debug"])
    assert res.exit_code == 1 and "no complete steps" in res.output
