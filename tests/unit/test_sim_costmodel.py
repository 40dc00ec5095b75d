"""Sim profiles and roofline cost model: memory fit, hand-checked step times, monotonicity."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from system.engines.sim.cli import sim
from system.engines.sim.costmodel import decode_step_s, prefill_shape, prefill_step_s, step_cost
from system.engines.sim.profiles import GIB, LLAMA3_8B, LLAMA3_70B, PROFILES, UnknownProfileError, get_profile


def test_kv_bytes_per_token_from_the_llama3_configs() -> None:
    # 2 (K,V) x layers x kv_heads x head_dim x 2 bytes
    assert LLAMA3_8B.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2 == 131_072
    assert LLAMA3_70B.kv_bytes_per_token == 2 * 80 * 8 * 128 * 2 == 327_680


def test_weight_sizes_bf16_and_4bit_match_published_checkpoints() -> None:
    assert get_profile("llama3-8b-bf16-h100-tp1").weight_bytes == pytest.approx(16.06e9, rel=0.01)
    # AWQ checkpoints: Llama-3-8B ~5.7 GB, Llama-3-70B ~40 GB
    assert 5.0e9 < get_profile("llama3-8b-awq-h100-tp1").weight_bytes < 6.5e9
    assert 37e9 < get_profile("llama3-70b-awq-h100-tp1").weight_bytes < 43e9


def test_70b_bf16_does_not_fit_one_80gb_gpu_and_the_cli_refuses_it() -> None:
    p = get_profile("llama3-70b-bf16-h100-tp1")
    assert not p.fits and p.num_blocks == 0
    assert "weights need" in p.problems()[0]
    assert "DOES NOT FIT" in p.describe()
    res = CliRunner().invoke(sim, ["--profile", p.name, "--port", "1"])
    assert res.exit_code != 0 and "cannot be served" in res.output
    # 4 GPUs are enough
    assert get_profile("llama3-70b-bf16-h100-tp4").fits


def test_every_profile_that_fits_holds_a_full_context_and_describes_itself() -> None:
    fitting = [p for p in PROFILES.values() if p.fits]
    assert len(fitting) >= 30 and "debug" in PROFILES
    for p in fitting:
        assert p.num_blocks * p.block_size >= p.max_model_len
        assert p.name in p.describe()


def test_unknown_profile_is_a_clear_error() -> None:
    with pytest.raises(UnknownProfileError, match="list-profiles"):
        get_profile("llama3-9b")
    res = CliRunner().invoke(sim, ["--profile", "nope", "--port", "1"])
    assert res.exit_code == 2 and "unknown sim profile" in res.output


def test_8b_h100_decode_step_matches_a_hand_roofline() -> None:
    p = get_profile("llama3-8b-bf16-h100-tp1")
    # batch 1, 1k context: read 16.06 GB of weights + 1024 x 128 KiB of KV at 3.35 TB/s x 0.8, + 1.5 ms
    hand = (16.06e9 + 1025 * 131_072) / (3.35e12 * 0.8) + 0.0015
    assert decode_step_s(p, batch=1, context=1024) == pytest.approx(hand, rel=0.01)
    # plausible against published vLLM numbers for Llama-3-8B on one H100 (ITL ~6-10 ms at low load)
    assert 0.005 < decode_step_s(p, 1, 1024) < 0.010
    c = step_cost(p, prefill_shape(4096))
    assert c.compute_s > c.memory_s  # long prefill is compute-bound
    assert prefill_step_s(p, 4096) == pytest.approx(2 * 8.03e9 * 4096 / (989.5e12 * 0.6), rel=0.15)


@pytest.mark.parametrize("name", ["llama3-8b-bf16-h100-tp1", "llama3-70b-awq-a100-tp4", "debug"])
def test_step_time_is_monotonic_in_batch_size_context_and_prefill_length(name: str) -> None:
    p = get_profile(name)
    by_batch = [decode_step_s(p, b, 512) for b in (1, 8, 64, 256, 1024)]
    assert by_batch == sorted(by_batch) and by_batch[-1] > by_batch[0]
    by_ctx = [decode_step_s(p, 32, c) for c in (128, 1024, 4096)]
    assert by_ctx == sorted(by_ctx) and by_ctx[-1] > by_ctx[0]
    by_prefill = [prefill_step_s(p, t) for t in (16, 256, 2048, 8192)]
    assert by_prefill == sorted(by_prefill) and by_prefill[-1] > by_prefill[0]


def test_tensor_parallelism_speeds_up_decode_but_pays_all_reduce() -> None:
    tp = {n: get_profile(f"llama3-70b-awq-h100-tp{n}") for n in (1, 2, 4, 8)}
    steps = [decode_step_s(tp[n], 16, 1024) for n in (1, 2, 4, 8)]
    assert steps == sorted(steps, reverse=True)
    assert steps[3] > steps[0] / 8  # sub-linear: all-reduce + fixed overhead
    assert step_cost(tp[1], prefill_shape(8)).comm_s == 0.0
    assert step_cost(tp[8], prefill_shape(8)).comm_s > 0.0
    # more GPUs -> more KV cache
    assert tp[8].num_blocks > tp[1].num_blocks


def test_debug_profile_steps_are_tens_of_ms() -> None:
    p = get_profile("debug")
    assert 0.015 < decode_step_s(p, 1, 16) < 0.03
    assert 0.015 < prefill_step_s(p, 50) < 0.03
    assert p.kv_cache_bytes > 1 * GIB
