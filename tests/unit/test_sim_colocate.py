"""Offline co-location predictor, GPU/host cost split, shared virtual GPU, profile provenance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from system.engines.sim.cli import sim
from system.engines.sim.colocate import predict
from system.engines.sim.costmodel import decode_shape, step_cost
from system.engines.sim.profiles import CALIBRATION_BASES, PROFILES, UnknownProfileError, get_profile
from system.engines.sim.vgpu import VirtualGpu

BASE = CALIBRATION_BASES["transformers-cb-h100-llama-1b-uncalibrated"]
# GPU-bound: 10 ms of kernels per step, no host work; host-bound: 10 ms of host work, ~no kernels
GPU_BOUND = BASE.with_overrides(layer_overhead_s=10e-3 / 16)
HOST_BOUND = BASE.with_overrides(step_overhead_s=10e-3, memory_eff=1.0)
LENS = [100] * 64


def test_step_is_host_plus_forward_and_graphs_remove_only_the_launches() -> None:
    p = BASE.with_overrides(layer_overhead_s=1e-4, step_overhead_s=2e-3, launch_overhead_s=1e-3)
    c = step_cost(p, decode_shape(8, 200))
    assert c.launch_s == 0.0 and c.total_s == pytest.approx(c.host_s + c.gpu_s)
    assert c.gpu_s > 16 * 1e-4  # roofline + the per-layer kernel time
    ng = step_cost(p.with_overrides(cuda_graphs=False), decode_shape(8, 200))
    assert ng.gpu_s == pytest.approx(c.gpu_s)  # the kernels are the same
    assert ng.launch_s == pytest.approx(16 * 1e-3)
    assert ng.total_s == pytest.approx(ng.host_s + max(ng.gpu_s, ng.launch_s))


def test_packed_attention_grows_quadratically_with_the_batch() -> None:
    p = BASE.with_overrides(score_bytes=4.0)
    extra = [step_cost(p, decode_shape(b, 200)).kernel_s for b in (64, 128)]
    assert extra[1] / extra[0] == pytest.approx(4.0, rel=0.01)


def test_prediction_is_deterministic_and_reports_every_field() -> None:
    a = predict(
        BASE.with_overrides(step_overhead_s=1e-3), concurrency=8, input_lengths=LENS, output_tokens=32
    )
    b = predict(
        BASE.with_overrides(step_overhead_s=1e-3), concurrency=8, input_lengths=LENS, output_tokens=32
    )
    assert a == b and a.requests == 64
    assert 0 < a.ttft_p50_ms <= a.ttft_p99_ms and a.tpot_p50_ms > 0 and 0 < a.gpu_util_mean < 100


def test_one_stream_steps_at_host_plus_gpu_and_utilisation_is_gpu_share() -> None:
    p = BASE.with_overrides(layer_overhead_s=5e-4, step_overhead_s=4e-3)
    r = predict(p, concurrency=1, input_lengths=[100] * 4, output_tokens=64)
    c = step_cost(p, decode_shape(1, 132))
    assert r.tpot_p50_ms == pytest.approx(c.total_s * 1e3, rel=0.02)
    assert r.gpu_util_mean == pytest.approx(100 * c.gpu_s / c.total_s, abs=2.0)


def test_colocated_gpu_work_serialises_and_host_work_runs_in_parallel() -> None:
    def tps(p, k: int) -> float:
        half = p.with_overrides(gpu_memory_utilization=0.4)
        return predict([half] * k, concurrency=k, input_lengths=LENS, output_tokens=32).tok_per_s

    # GPU-bound: two instances with one stream each share the kernels' time: no gain over one instance
    assert tps(GPU_BOUND, 2) == pytest.approx(tps(GPU_BOUND, 1), rel=0.03)
    # host-bound: two processes do their host work at once: twice the throughput
    assert tps(HOST_BOUND, 2) == pytest.approx(2 * tps(HOST_BOUND, 1), rel=0.03)
    r = predict([GPU_BOUND.with_overrides(gpu_memory_utilization=0.4)] * 2, concurrency=2,
                input_lengths=LENS, output_tokens=32)  # fmt: skip
    assert r.gpu_util_mean > 95  # the GPU never idles while the other instance has work


def test_memory_fraction_splits_the_kv_cache() -> None:
    tiny = BASE.with_overrides(gpu_memory_utilization=0.03)  # ~2.4 GB: not even the weights + reserve
    with pytest.raises(ValueError, match="do not fit"):
        predict(tiny, concurrency=1, input_lengths=LENS, output_tokens=8)
    assert BASE.with_overrides(gpu_memory_utilization=0.2).num_blocks < BASE.num_blocks / 4


def test_predict_cli_prints_the_contract_keys(tmp_path: Path) -> None:
    f = tmp_path / "lens.json"
    f.write_text(json.dumps([120, 80, 300, 45] * 4))
    args = ["predict", "--profile", "transformers-cb-h100-llama-1b", "--colocated", "2", "--concurrency", "4",
            "--requests", "16", "--input-lengths", str(f), "--output-tokens", "16", "--json"]  # fmt: skip
    res = CliRunner().invoke(sim, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    for k in ("tok_per_s", "ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "e2e_p50_s", "gpu_util_mean"):
        assert out[k] > 0
    assert out["memory_fraction"] == pytest.approx(0.45)
    bad = CliRunner().invoke(sim, [*args[:-1], "--memory-fraction", "0.6"])
    assert bad.exit_code != 0 and "exceeds the GPU" in bad.output
    short = CliRunner().invoke(sim, [*args[:7], "--requests", "99", *args[9:]])
    assert short.exit_code != 0 and "16 lengths for 99 requests" in short.output


def test_virtual_gpu_serialises_owners_with_a_switch_and_fills_gaps() -> None:
    g = VirtualGpu(switch_s=0.001)
    assert g.reserve(0.0, 0.010, owner=1) == (0.0, 0.010)
    assert g.reserve(0.002, 0.005, owner=2) == pytest.approx((0.011, 0.016))  # waits, pays the switch
    assert g.reserve(0.016, 0.004, owner=2) == pytest.approx((0.016, 0.020))  # same owner: no switch
    g.reserve(0.050, 0.010, owner=1)
    assert g.reserve(0.021, 0.005, owner=1) == pytest.approx((0.021, 0.026))  # fits the gap before 0.05
    assert g.busy_s == pytest.approx(0.034)


def test_unknown_profile_suggestions_match_the_whole_name() -> None:
    with pytest.raises(UnknownProfileError) as e:
        get_profile("llama3-70b")
    hint = str(e.value).split("did you mean:")[1]
    names = [n.strip(" )") for n in hint.split(";")[0].split(",")]
    assert names and all("70b" in n for n in names)


def test_every_profile_states_its_provenance() -> None:
    res = CliRunner().invoke(sim, ["--list-profiles"])
    assert res.exit_code == 0
    assert res.output.count("provenance:") == len(PROFILES)
    assert "fitted to results/reference/h100-transformers-serve" in res.output
    assert "fitted to a measured CPU sweep" in res.output
