"""analysis.plots: every figure is a decodable PNG plus an SVG; empty inputs get a note, not a crash."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest

from analysis.load import load_all
from analysis.metrics import expert_balance, slos_from_manifest, summarize
from analysis.plots import plot_all, plot_gpu_timeline, plot_latency, plot_requests_per_expert

FIXTURE_RUN = Path(__file__).resolve().parents[1] / "fixtures" / "results" / "fixture" / "run-1"


@pytest.fixture(scope="module")
def fixture_data():
    data = load_all(FIXTURE_RUN)
    summary = summarize(
        data.records, data.steps, slos_from_manifest(data.manifest), gpu=data.gpu, configs=data.configs
    )
    return data, summary, expert_balance(data.records, data.configs)


def _check(paths: list[Path]) -> None:
    png, svg = paths
    assert png.suffix == ".png" and svg.suffix == ".svg"
    img = matplotlib.image.imread(png)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
    assert img[..., :3].std() > 0.01  # not a blank canvas
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "</svg>" in text


def test_plot_all_writes_every_figure(fixture_data, tmp_path) -> None:
    data, summary, balance = fixture_data
    figs = plot_all(summary, data.records, balance, data.gpu, data.steps, tmp_path / "plots")
    assert set(figs) == {
        "throughput_vs_users",
        "ttft_vs_users",
        "e2e_vs_users",
        "tpot_vs_users",
        "gpu_timeline",
        "requests_per_expert",
        "latency_cdf",
    }
    for paths in figs.values():
        _check(paths)
    # labels with units end up in the SVG text
    svg = (tmp_path / "plots" / "ttft_vs_users.svg").read_text()
    assert "Time to first token (ms)" in svg and "Concurrent users" in svg


def test_svg_is_reproducible(fixture_data, tmp_path) -> None:
    _, summary, _ = fixture_data
    a = plot_latency(summary, tmp_path / "a", "e2e")[1].read_bytes()
    b = plot_latency(summary, tmp_path / "b", "e2e")[1].read_bytes()
    assert a == b


def test_empty_inputs_draw_notes(fixture_data, tmp_path) -> None:
    data, _, balance = fixture_data
    paths = plot_gpu_timeline(data.gpu.iloc[0:0], data.steps, tmp_path)
    _check(paths)
    assert "no GPU data" in paths[1].read_text()
    paths = plot_requests_per_expert(balance[balance["topology"] == "single"], tmp_path)
    assert "no routed configuration" in paths[1].read_text()
    with pytest.raises(ValueError, match="metric must be one of"):
        plot_latency(pd.DataFrame(), tmp_path, "nope")
