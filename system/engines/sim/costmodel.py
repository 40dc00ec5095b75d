"""Step-time model: GPU work (roofline + kernel overhead + packed attention) and host work, run in series."""

from __future__ import annotations

from dataclasses import dataclass

from system.engines.sim.profiles import Profile


@dataclass(frozen=True)
class BatchShape:
    """What one scheduler step computes, aggregated over the scheduled requests.

    num_tokens: tokens computed this step (prefill chunk tokens + one per decoding sequence);
    num_seqs: sequences in the step (each gets one LM-head row and, if caught up, one sampled token);
    attn_pairs: sum over computed tokens of the context each attends to (query-key pairs per head/layer);
    kv_read_tokens: sum over sequences of the KV entries read (context before + new tokens);
    num_new_seqs: sequences admitted from the waiting queue this step (new or resumed after preemption).
    """

    num_tokens: int
    num_seqs: int
    attn_pairs: float
    kv_read_tokens: int
    num_new_seqs: int = 0


@dataclass(frozen=True)
class StepCost:
    """One step's work. GPU: compute/memory roofline, all-reduce, kernel overhead. Host: overhead_s
    (scheduling, input preparation, sampling bookkeeping, detokenising and HTTP streaming of the step's
    tokens) and launch_s (kernel launches from Python; 0 with CUDA graphs).

    What overlaps what: host work and GPU work of one engine run in series (the engine's loop prepares a
    batch, launches it, waits for the sampled tokens, then streams them out before it prepares the next
    batch; transformers serve and vLLM's default synchronous scheduling both do this). Kernel launches
    overlap the kernels they launch (the GPU runs kernel i while Python launches kernel i+1), so the
    forward pass lasts max(launch_s, gpu_s).
    """

    compute_s: float
    memory_s: float
    comm_s: float
    overhead_s: float
    kernel_s: float = 0.0
    launch_s: float = 0.0

    @property
    def gpu_s(self) -> float:
        """Time a kernel is running on the GPU during this step (what NVML utilisation samples)."""
        return max(self.compute_s, self.memory_s) + self.comm_s + self.kernel_s

    @property
    def host_s(self) -> float:
        return self.overhead_s

    @property
    def forward_s(self) -> float:
        """The forward pass as the engine's loop sees it: kernels, or the launches when those are slower."""
        return max(self.gpu_s, self.launch_s)

    @property
    def total_s(self) -> float:
        return self.forward_s + self.overhead_s


def step_cost(p: Profile, shape: BatchShape) -> StepCost:
    """Cost of one step on profile `p`.

    FLOPs  = 2·(P - 2·V·H)·T  (every linear layer, per computed token)
           + 2·V·H·S          (LM head only for the last position of each sequence; embedding is a lookup)
           + 4·L·(heads·d)·A  (QK^T and PV: 2 FLOPs per multiply-add, two matmuls, A = attention pairs)
    Bytes  = weights (quantised size) + KV read (kv_read_tokens · kv_bytes_per_token) + KV written (T · same)
    Each TP shard does 1/TP of both. compute = FLOPs/TP / (peak · compute_eff);
    memory = Bytes/TP / (HBM bw · memory_eff).
    Kernel overhead (GPU) = L · layer_overhead_s + packed attention L·heads·T·K·score_bytes / (HBM bw ·
    memory_eff), K = keys over the whole batch (an engine that attends over the packed batch with a dense
    mask computes every query against every key of the batch, not only its own sequence's).
    Launch (host, overlaps the kernels) = L · launch_overhead_s without CUDA graphs, else 0.
    Host overhead = step_overhead + per_seq_overhead·S + per_token_overhead·T + per_request_overhead·N_new.
    All-reduce (TP > 1): 2 per layer (after attention and after the MLP) of T·hidden bf16 values, ring
    algorithm: 2·(TP-1)/TP · bytes / (NVLink per-direction bw · comm_eff) + a fixed latency each.
    """
    m, hw, tp = p.model, p.hardware, p.tp
    linear_params = m.params - m.embedding_params
    flops = (
        2.0 * linear_params * shape.num_tokens
        + 2.0 * m.vocab * m.hidden * shape.num_seqs
        + 4.0 * m.layers * m.heads * m.head_dim * shape.attn_pairs
    )
    kv_bytes = p.kv_bytes_per_token * (shape.kv_read_tokens + shape.num_tokens)
    mem_bytes = p.weight_bytes + kv_bytes
    bw = hw.hbm_gbs * 1e9 * p.memory_eff
    compute_s = flops / tp / (hw.bf16_tflops * 1e12 * p.compute_eff)
    memory_s = mem_bytes / tp / bw
    comm_s = 0.0
    if tp > 1:
        msg = shape.num_tokens * m.hidden * 2.0
        per_ar = 2.0 * (tp - 1) / tp * msg / (hw.nvlink_gbs * 1e9 * p.comm_eff) + p.allreduce_latency_s
        comm_s = 2 * m.layers * per_ar
    kernel_s = m.layers * p.layer_overhead_s
    if p.score_bytes:
        keys = shape.kv_read_tokens + shape.num_tokens
        kernel_s += m.layers * m.heads / tp * shape.num_tokens * keys * p.score_bytes / bw
    launch_s = 0.0 if p.cuda_graphs else m.layers * p.launch_overhead_s
    overhead_s = (
        p.step_overhead_s
        + p.per_seq_overhead_s * shape.num_seqs
        + p.per_token_overhead_s * shape.num_tokens
        + p.per_request_overhead_s * shape.num_new_seqs
    )
    return StepCost(compute_s, memory_s, comm_s, overhead_s, kernel_s, launch_s)


def step_time_s(p: Profile, shape: BatchShape) -> float:
    return step_cost(p, shape).total_s


def decode_shape(batch: int, context: int) -> BatchShape:
    """`batch` sequences each decoding one token with `context` tokens already cached."""
    return BatchShape(
        num_tokens=batch,
        num_seqs=batch,
        attn_pairs=float(batch * (context + 1)),
        kv_read_tokens=batch * context,
    )


def prefill_shape(tokens: int, already: int = 0) -> BatchShape:
    """One sequence computing `tokens` new prompt tokens after `already` cached ones (causal attention)."""
    pairs = tokens * already + tokens * (tokens + 1) / 2.0
    return BatchShape(num_tokens=tokens, num_seqs=1, attn_pairs=pairs, kv_read_tokens=already)


def decode_step_s(p: Profile, batch: int, context: int) -> float:
    return step_time_s(p, decode_shape(batch, context))


def prefill_step_s(p: Profile, tokens: int) -> float:
    return step_time_s(p, prefill_shape(tokens))
