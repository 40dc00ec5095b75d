"""Simulator profiles: GPU and model specs (every constant cited) combined into named serving profiles."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

GIB = 1024**3
MIB = 1024**2


@dataclass(frozen=True)
class Hardware:
    """One GPU. Peak figures are datasheet numbers; the cost model applies efficiency factors on top."""

    name: str
    bf16_tflops: float  # dense BF16 tensor-core peak (no sparsity)
    hbm_gbs: float  # HBM bandwidth, GB/s (1e9 bytes)
    memory_bytes: int  # total device memory as CUDA sees it
    nvlink_gbs: float  # NVLink bandwidth per direction per GPU, GB/s
    source: str


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer as the cost model needs it (all from the model's config.json)."""

    name: str
    params: float  # total parameters
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    max_position: int
    source: str

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V, every layer, bf16 KV cache (vLLM's default kv_cache_dtype="auto" keeps bf16)."""
        return 2 * self.layers * self.kv_heads * self.head_dim * 2

    @property
    def embedding_params(self) -> float:
        """Input embedding + untied LM head (Llama-3 does not tie them)."""
        return 2.0 * self.vocab * self.hidden


# Datasheet numbers. H100: "NVIDIA H100 Tensor Core GPU" datasheet (SXM5 column): BF16 1,979 TFLOPS *with
# sparsity* -> 989.5 dense, 3.35 TB/s HBM3, 80 GB, NVLink 900 GB/s (bidirectional total -> 450 per direction).
# A100: "NVIDIA A100 Tensor Core GPU" datasheet (80GB SXM column): BF16 312 TFLOPS dense, 2,039 GB/s HBM2e,
# 80 GB, NVLink 600 GB/s (-> 300 per direction). Memory sizes are the totals nvidia-smi reports
# (H100 80GB HBM3: 81,559 MiB; A100-SXM4-80GB: 81,920 MiB), which is what gpu_memory_utilization multiplies.
H100_SXM = Hardware(
    name="H100-SXM-80GB",
    bf16_tflops=989.5,
    hbm_gbs=3350.0,
    memory_bytes=81559 * MIB,
    nvlink_gbs=450.0,
    source="NVIDIA H100 datasheet (SXM5): 989.5 dense BF16 TFLOPS, 3.35 TB/s, 80 GB, NVLink 900 GB/s bidir",
)
A100_SXM = Hardware(
    name="A100-SXM4-80GB",
    bf16_tflops=312.0,
    hbm_gbs=2039.0,
    memory_bytes=81920 * MIB,
    nvlink_gbs=300.0,
    source="NVIDIA A100 datasheet (80GB SXM): 312 dense BF16 TFLOPS, 2,039 GB/s, 80 GB, NVLink 600 GB/s",
)
# A made-up small GPU for the `debug` profile: numbers chosen so steps take tens of ms, not realistic.
DEBUG_GPU = Hardware(
    name="debug-gpu",
    bf16_tflops=10.0,
    hbm_gbs=1000.0,
    memory_bytes=2 * GIB,
    nvlink_gbs=100.0,
    source="synthetic (debug profile)",
)

# meta-llama/Meta-Llama-3-8B and -70B config.json (hidden_size, num_hidden_layers, num_attention_heads,
# num_key_value_heads, vocab_size=128256, max_position_embeddings=8192); parameter counts from the model cards
# (8.03 B, 70.6 B). head_dim = hidden_size / num_attention_heads = 128.
LLAMA3_8B = ModelSpec(
    name="Llama-3-8B",
    params=8.03e9,
    layers=32,
    hidden=4096,
    heads=32,
    kv_heads=8,
    head_dim=128,
    vocab=128256,
    max_position=8192,
    source="meta-llama/Meta-Llama-3-8B config.json + model card (8.03 B params)",
)
LLAMA3_70B = ModelSpec(
    name="Llama-3-70B",
    params=70.6e9,
    layers=80,
    hidden=8192,
    heads=64,
    kv_heads=8,
    head_dim=128,
    vocab=128256,
    max_position=8192,
    source="meta-llama/Meta-Llama-3-70B config.json + model card (70.6 B params)",
)
TINY = ModelSpec(
    name="tiny-debug",
    params=1.0e8,
    layers=4,
    hidden=512,
    heads=8,
    kv_heads=4,
    head_dim=64,
    vocab=1000,
    max_position=4096,
    source="synthetic (debug profile)",
)


def llama_params(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int) -> float:
    """Parameters of a Llama config: untied embedding + LM head, q/k/v/o, gated MLP, 2 norms per layer."""
    head_dim = hidden // heads
    attn = hidden * hidden * 2 + 2 * hidden * kv_heads * head_dim
    per_layer = attn + 3 * hidden * intermediate + 2 * hidden
    return float(2 * vocab * hidden + layers * per_layer + hidden)


# The random-weight Llamas the real-engine experiments build (system/engines/random_model.py SHAPES):
# "1b" is TinyLlama-1.1B's config (max_position 4096 as built there), "tiny" the CPU test model.
TINYLLAMA_1B = ModelSpec(
    name="Llama-1.1B (TinyLlama shape)",
    params=llama_params(2048, 5632, 22, 32, 4, 32000),  # 1.100 B
    layers=22,
    hidden=2048,
    heads=32,
    kv_heads=4,
    head_dim=64,
    vocab=32000,
    max_position=4096,
    source="TinyLlama/TinyLlama-1.1B config.json shape (random_model.py SHAPES['1b']); params from the shape",
)
LLAMA_TINY_RANDOM = ModelSpec(
    name="Llama-tiny (random weights)",
    params=llama_params(64, 128, 2, 4, 2, 2000),  # 0.33 M
    layers=2,
    hidden=64,
    heads=4,
    kv_heads=2,
    head_dim=16,
    vocab=2000,
    max_position=2048,
    source="random_model.py SHAPES['tiny'] (hidden 64, MLP 128, 2 layers, 4/2 heads, vocab 2000)",
)
# The random-weight Llama shapes of the H100 reference measurements
# (results/reference/h100-transformers-serve/README.md: LlamaConfig, untied embeddings, bf16).
REF_LLAMA_1B = ModelSpec(
    name="Llama-1.1B (reference shape)",
    params=llama_params(2048, 8192, 16, 32, 8, 32000),  # 1.10 B
    layers=16,
    hidden=2048,
    heads=32,
    kv_heads=8,
    head_dim=64,
    vocab=32000,
    max_position=4096,
    source="results/reference/h100-transformers-serve/README.md '1b': hidden 2048, 16 layers, 32/8 heads, "
    "MLP 8192, vocab 32000",
)
REF_LLAMA_8B = ModelSpec(
    name="Llama-7.2B (reference shape)",
    params=llama_params(4096, 14336, 32, 32, 8, 32000),  # 7.24 B
    layers=32,
    hidden=4096,
    heads=32,
    kv_heads=8,
    head_dim=128,
    vocab=32000,
    max_position=4096,
    source="results/reference/h100-transformers-serve/README.md '8b': hidden 4096, 32 layers, 32/8 heads, "
    "MLP 14336, vocab 32000",
)
# The H100 of the reference runs reports 80 GB HBM3 (NVML total 79.6 GiB on H100 SXM/PCIe 80GB); the
# processes peaked at 70-78 GiB (gpu_mem_max_gib): transformers' continuous batching sizes its KV cache from
# the free memory (default share 0.9 of it, --cb-max-memory-percent).
REF_MEMORY_FRACTION = 0.9

# The 2-vCPU build box the CPU calibration ran on (lscpu: AMD EPYC, 2 cores, AVX-512 + FMA, 2.6 GHz,
# 23 GiB). Peak fp32 = 2 cores x 2.6 GHz x 32 FLOP/cycle (two 256-bit FMA pipes) = 0.166 TFLOPS; memory
# bandwidth 20 GB/s is an assumption (not measured). The tiny model's compute and bytes are negligible
# next to the host overheads the calibration fits; these numbers only keep the roofline terms honest.
CPU_2C_EPYC = Hardware(
    name="cpu-2c-epyc",
    bf16_tflops=0.166,
    hbm_gbs=20.0,
    memory_bytes=23 * GIB,
    nvlink_gbs=1.0,  # unused (TP 1)
    source="lscpu, calibration host: 2 vCPU AMD EPYC @2.6 GHz, AVX-512/FMA (fp32 peak); 20 GB/s assumed",
)

# 4-bit AWQ/GPTQ (W4A16, group size 128): every linear layer stores 4-bit weights plus one fp16 scale and one
# packed 4-bit zero point per 128 weights -> 4 + (16 + 4) / 128 ≈ 4.16 bits per weight; embeddings and the
# LM head stay bf16 (AutoAWQ / GPTQ defaults). Resulting sizes (8B ≈ 5.7 GB, 70B ≈ 40 GB) match the published
# AWQ checkpoints of Llama-3 to within a few per cent.
QUANT_BITS = {"bf16": 16.0, "awq": 4.0 + 20.0 / 128.0, "fp32": 32.0}  # fp32: CPU engines (calibration)

# Efficiency assumptions (fractions of datasheet peak). These are NOT measured here; they are typical
# published serving figures and are the knobs `expert-router calibrate` fits to real vLLM runs:
#  - compute: large bf16 GEMMs in prefill reach ~60 % of peak in vLLM (MFU figures reported for
#    prefill-heavy serving are 40-70 %);
#  - memory: decode GEMV/attention kernels stream weights at ~80 % of HBM peak;
#  - per-step fixed overhead: scheduler + sampling + kernel launches not hidden by CUDA graphs, ~1.5 ms in
#    vLLM V1 on Hopper; A100 hosts are typically older CPUs -> 2 ms;
#  - all-reduce: ring all-reduce at 70 % of NVLink per-direction bandwidth plus ~10 us latency each
#    (vLLM custom all-reduce / NCCL small-message latency on NVLink is 5-15 us).
DEFAULT_COMPUTE_EFF = 0.60
DEFAULT_MEMORY_EFF = 0.80
DEFAULT_COMM_EFF = 0.70
DEFAULT_ALLREDUCE_LATENCY_S = 10e-6


@dataclass(frozen=True)
class Profile:
    """A served model on some GPUs: everything the scheduler and the cost model need."""

    name: str
    hardware: Hardware
    model: ModelSpec
    quant: str = "bf16"
    tp: int = 1
    gpu_memory_utilization: float = 0.90  # vLLM default
    non_kv_reserve_bytes: int = 3 * GIB  # per GPU: activations + CUDA graphs + NCCL buffers (assumed)
    block_size: int = 16  # vLLM default block size on CUDA
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    max_model_len: int = 8192
    compute_eff: float = DEFAULT_COMPUTE_EFF
    memory_eff: float = DEFAULT_MEMORY_EFF
    comm_eff: float = DEFAULT_COMM_EFF
    allreduce_latency_s: float = DEFAULT_ALLREDUCE_LATENCY_S
    step_overhead_s: float = 0.0015
    # Host-side cost that grows with the batch (0 for the vLLM profiles, whose CUDA-graph steps hide it):
    # engines whose step is CPU/launch bound (transformers continuous batching: Python bookkeeping, input
    # tensors built per request, per-token detokenise + SSE in the same process) pay it per running
    # sequence and per scheduled token, and once per request admitted (request set-up: input tensors,
    # cache allocation, and the intake work of the HTTP side holding the same GIL). Fitted by
    # `expert-router calibrate` (docs/CALIBRATION.md).
    per_seq_overhead_s: float = 0.0
    per_token_overhead_s: float = 0.0
    per_request_overhead_s: float = 0.0
    # output length when a request does not force it: lognormal with this median and sigma (tokens)
    # GPU-side step terms (see costmodel.step_cost). layer_overhead_s: kernel time per layer per step that
    # the roofline does not account (small-batch kernels run far below peak; CUDA graphs remove the launch
    # gaps between them but not their duration). score_bytes: bytes moved per attention score when the
    # engine attends over the packed batch with a dense mask (QK^T materialised: cost ~ Q x K_total).
    layer_overhead_s: float = 0.0
    score_bytes: float = 0.0
    # host-side kernel launches per layer per step; only paid without CUDA graphs (one graph replay then)
    cuda_graphs: bool = True
    launch_overhead_s: float = 0.0
    # latency per request outside the engine's step loop (HTTP parsing, tokenising, the first chunk's
    # detokenise and send, in the server's own thread): adds to TTFT and E2E, occupies no step
    request_latency_s: float = 0.0
    output_len_median: float = 128.0
    output_len_sigma: float = 1.0
    num_gpu_blocks_override: int | None = (
        None  # as vLLM's --num-gpu-blocks-override (tests: force KV pressure)
    )
    description: str = ""
    # what backs the numbers: "datasheet-derived", "fitted to <data>", or "validated against <data>"
    provenance: str = "datasheet-derived"

    @property
    def weight_bytes(self) -> float:
        """Weight bytes over all GPUs: quantised linear layers + bf16 embeddings/LM head."""
        m = self.model
        linear = m.params - m.embedding_params
        return linear * QUANT_BITS[self.quant] / 8.0 + m.embedding_params * 2.0

    @property
    def kv_bytes_per_token(self) -> int:
        return self.model.kv_bytes_per_token

    @property
    def kv_cache_bytes(self) -> float:
        """KV cache over all GPUs: (memory * utilisation - weights shard - reserve) per GPU, times TP."""
        per_gpu = (
            self.hardware.memory_bytes * self.gpu_memory_utilization
            - self.weight_bytes / self.tp
            - self.non_kv_reserve_bytes
        )
        return per_gpu * self.tp

    @property
    def num_blocks(self) -> int:
        """KV blocks (of block_size tokens) that fit; 0 when the weights alone do not fit."""
        if self.num_gpu_blocks_override is not None:
            return self.num_gpu_blocks_override
        kv = self.kv_cache_bytes
        if kv <= 0:
            return 0
        return int(kv // (self.kv_bytes_per_token * self.block_size))

    def problems(self) -> list[str]:
        """Why this profile cannot be served (empty list: it can). Mirrors vLLM's start-up checks."""
        out: list[str] = []
        if self.model.heads % self.tp or self.model.kv_heads % self.tp:
            out.append(
                f"TP={self.tp} does not divide the attention heads ({self.model.heads}/{self.model.kv_heads})"
            )
        if self.max_model_len > self.model.max_position:
            out.append(f"max_model_len {self.max_model_len} > model context {self.model.max_position}")
        if self.kv_cache_bytes <= 0:
            need = self.weight_bytes / self.tp / GIB
            have = self.hardware.memory_bytes * self.gpu_memory_utilization / GIB
            out.append(
                f"weights need {need:.1f} GiB per GPU (+{self.non_kv_reserve_bytes / GIB:.0f} GiB reserve) "
                "but "
                f"only {have:.1f} GiB are usable at gpu_memory_utilization={self.gpu_memory_utilization}"
            )
        elif self.num_blocks * self.block_size < self.max_model_len:
            out.append(
                f"KV cache holds {self.num_blocks * self.block_size} tokens < "
                f"max_model_len {self.max_model_len}"
            )
        return out

    @property
    def fits(self) -> bool:
        return not self.problems()

    def with_overrides(self, **kw: object) -> Profile:
        """A copy with some fields changed (CLI overrides); None values are ignored."""
        return replace(self, **{k: v for k, v in kw.items() if v is not None})  # type: ignore[arg-type]

    def describe(self) -> str:
        """One line for `--list-profiles`."""
        if not self.fits:
            return f"{self.name:28s} DOES NOT FIT: {'; '.join(self.problems())}"
        from system.engines.sim.costmodel import decode_step_s  # local: avoids an import cycle

        kv_tokens = self.num_blocks * self.block_size
        itl1 = decode_step_s(self, batch=1, context=1024) * 1e3
        itl64 = decode_step_s(self, batch=64, context=1024) * 1e3
        return (
            f"{self.name:28s} {self.model.name} {self.quant} on {self.tp}x {self.hardware.name}: "
            f"weights {self.weight_bytes / 1e9:.1f} GB, KV {kv_tokens:,} tokens, "
            f"max_num_seqs {self.max_num_seqs}, batched tokens {self.max_num_batched_tokens}, "
            f"decode step @1k ctx: {itl1:.1f} ms (batch 1), {itl64:.1f} ms (batch 64)"
        )


def _vllm_batch_defaults(hw: Hardware) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) vLLM picks for its OpenAI server on this GPU.

    vllm/engine/arg_utils.py EngineArgs.get_batch_defaults: >= 70 GiB and not an A100 -> 8192 / 1024,
    otherwise 2048 / 256 (A100 excluded on purpose, vLLM PR #17885).
    """
    if hw.memory_bytes >= 70 * GIB and "A100" not in hw.name:
        return 8192, 1024
    return 2048, 256


def _build_registry() -> dict[str, Profile]:
    reg: dict[str, Profile] = {}
    models = {"llama3-8b": LLAMA3_8B, "llama3-70b": LLAMA3_70B}
    gpus = {"h100": (H100_SXM, 0.0015), "a100": (A100_SXM, 0.0020)}
    for mkey, model in models.items():
        for quant in ("bf16", "awq"):
            for gkey, (hw, overhead) in gpus.items():
                tokens, seqs = _vllm_batch_defaults(hw)
                for tp in (1, 2, 4, 8):
                    name = f"{mkey}-{quant}-{gkey}-tp{tp}"
                    reg[name] = Profile(
                        name=name,
                        hardware=hw,
                        model=model,
                        quant=quant,
                        tp=tp,
                        max_num_seqs=seqs,
                        max_num_batched_tokens=tokens,
                        max_model_len=model.max_position,
                        step_overhead_s=overhead,
                        description=f"{model.name} {quant} on {tp}x {hw.name}",
                    )
    # `debug`: steps of ~20 ms so TTFT and inter-token gaps are tens of ms and easy to assert in tests;
    # large max_num_seqs so one process can hold ~1,000 concurrent streams in the benchmark.
    reg["debug"] = Profile(
        name="debug",
        hardware=DEBUG_GPU,
        model=TINY,
        quant="bf16",
        tp=1,
        gpu_memory_utilization=0.9,
        non_kv_reserve_bytes=128 * MIB,
        max_num_seqs=1024,
        max_num_batched_tokens=8192,
        max_model_len=4096,
        compute_eff=1.0,
        memory_eff=1.0,
        comm_eff=1.0,
        step_overhead_s=0.020,
        output_len_median=32.0,
        output_len_sigma=0.5,
        description="tiny synthetic model: ~20 ms steps (tests, demos, benchmarks)",
        provenance="synthetic (tests, demos, benchmarks; no real GPU behind it)",
    )
    return reg


# Starting points for `expert-router calibrate` (not served, not in PROFILES): transformers serve
# --continuous-batching on the real-engine experiments' hardware and models, host overheads 0. Scheduler
# limits are transformers' CB defaults (5.x generation/continuous_batching: max_batch_tokens 8192,
# max_requests_per_batch 1024, page_size 256); KV memory is the share --cb-max-memory-percent gives
# (gpu_h100.yaml single: 0.6). The fitted profiles are the JSON files in calibrated/ (registered below),
# named as these without "-uncalibrated".
CALIBRATION_BASES: dict[str, Profile] = {
    **{
        f"transformers-cb-h100-llama-{key}-uncalibrated": Profile(
            name=f"transformers-cb-h100-llama-{key}-uncalibrated",
            hardware=H100_SXM,
            model=model,
            gpu_memory_utilization=REF_MEMORY_FRACTION,
            non_kv_reserve_bytes=2 * GIB,
            block_size=256,
            max_num_seqs=1024,
            max_num_batched_tokens=8192,
            max_model_len=4096,
            step_overhead_s=0.0,
            description=f"transformers serve --continuous-batching --cb-use-cuda-graph, {model.name}, "
            "1x H100",
            provenance="datasheet-derived (uncalibrated base)",
        )
        for key, model in (("1b", REF_LLAMA_1B), ("8b", REF_LLAMA_8B))
    },
    "transformers-cb-cpu-llama-tiny-uncalibrated": Profile(
        name="transformers-cb-cpu-llama-tiny-uncalibrated",
        hardware=CPU_2C_EPYC,
        model=LLAMA_TINY_RANDOM,
        quant="fp32",
        gpu_memory_utilization=0.5,
        non_kv_reserve_bytes=1 * GIB,
        block_size=32,  # cpu_sweep.yaml: --cb-num-blocks 256 --cb-block-size 32
        num_gpu_blocks_override=256,
        max_num_seqs=1024,
        max_num_batched_tokens=8192,
        max_model_len=2048,
        compute_eff=1.0,
        memory_eff=1.0,
        step_overhead_s=0.0,
        description="transformers serve --continuous-batching on 2 CPU cores, tiny random Llama, fp32",
    ),
}
CALIBRATED_DIR = Path(__file__).with_name("calibrated")


def _load_calibrated() -> dict[str, Profile]:
    """Calibrated profiles shipped as JSON (calibrated/*.json, written by `expert-router calibrate --out`)."""
    from system.engines.sim.profilefiles import load_profile_file  # local: profilefiles imports this module

    out: dict[str, Profile] = {}
    for f in sorted(CALIBRATED_DIR.glob("*.json")):
        prof = load_profile_file(f)
        out[prof.name] = prof
    return out


PROFILES: dict[str, Profile] = _build_registry()


class UnknownProfileError(KeyError):
    """No profile by that name."""


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        close = suggest(name)
        hint = f" (did you mean: {', '.join(close)})" if close else ""
        raise UnknownProfileError(
            f"unknown sim profile {name!r}{hint}; see `expert-router sim --list-profiles`"
        ) from None


def suggest(name: str, limit: int = 8) -> list[str]:
    """Registered names closest to `name` as a whole: every dash-separated part of it counts (so
    `llama3-70b` suggests the 70B profiles, not every llama3 one), then string similarity breaks ties."""
    import difflib

    parts = [p for p in name.lower().split("-") if p]

    def score(n: str) -> tuple[int, float]:
        low = n.lower()
        return (sum(p in low for p in parts), difflib.SequenceMatcher(None, name.lower(), low).ratio())

    ranked = sorted(PROFILES, key=lambda n: score(n), reverse=True)
    best = score(ranked[0])[0] if ranked else 0
    return [n for n in ranked if best and score(n)[0] == best][:limit]


def blocks_for(tokens: int, block_size: int) -> int:
    return math.ceil(tokens / block_size)


PROFILES.update(_load_calibrated())
