"""Built-in launchers: `sim` (our simulator), `vllm` (`vllm serve`), `transformers` (`transformers serve`)."""

from __future__ import annotations

import sys

from system.engines.base import (
    LOOPBACK,
    LaunchSpec,
    SimEngine,
    TransformersEngine,
    VllmEngine,
    register_launcher,
)


def _urls(host: str, port: int) -> tuple[str, str]:
    base = f"http://{host}:{port}"
    return base, f"{base}/health"


def _gpu_env(gpus: list[int]) -> dict[str, str]:
    # pin each engine to its GPUs; an empty list inherits the caller's visibility. PCI_BUS_ID order makes
    # CUDA's numbering match NVML's (the GPU sampler's); CUDA's default "fastest first" order does not.
    if not gpus:
        return {}
    return {"CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in gpus), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def _flags(pairs: list[tuple[str, object]]) -> list[str]:
    """`--flag value` for every pair whose value is set (None means: leave the engine's default)."""
    return [part for flag, value in pairs if value is not None for part in (flag, str(value))]


class SimLauncher:
    """`python -m system.cli sim ...`: the current interpreter, so no console script on PATH is needed."""

    def build(
        self, spec: SimEngine, *, name: str, port: int, host: str = LOOPBACK, seed: int = 0
    ) -> LaunchSpec:
        base, health = _urls(host, port)
        cmd = [sys.executable, "-m", "system.cli", "sim", "--profile", spec.profile]
        cmd += ["--host", host, "--port", str(port), "--model-name", name]
        cmd += ["--seed", str(spec.seed if spec.seed is not None else seed)]
        if spec.stream_interval is not None:
            cmd += ["--stream-interval", str(spec.stream_interval)]
        if spec.memory_fraction is not None:
            cmd += ["--gpu-memory-utilization", str(spec.memory_fraction)]
        cmd += spec.args
        return LaunchSpec(
            cmd=cmd,
            env=dict(spec.env),
            health_url=health,
            base_url=base,
            metrics_url=f"{base}/metrics",
            served_model=name,
            startup_timeout_s=spec.startup_timeout_s,
        )


class VllmLauncher:
    """`vllm serve MODEL --host --port --tensor-parallel-size ...` with CUDA_VISIBLE_DEVICES from `gpus`.

    The server answers to both the expert name and the model id (`--served-model-name NAME MODEL`), so the
    gateway can forward either.
    """

    def build(
        self, spec: VllmEngine, *, name: str, port: int, host: str = LOOPBACK, seed: int = 0
    ) -> LaunchSpec:
        base, health = _urls(host, port)
        cmd = [*spec.argv_prefix("vllm"), "serve", spec.model, "--host", host, "--port", str(port)]
        served = [name] if name == spec.model else [name, spec.model]
        cmd += ["--served-model-name", *served]
        cmd += ["--tensor-parallel-size", str(spec.tp)]
        optional: list[tuple[str, object]] = [
            ("--gpu-memory-utilization", spec.gpu_memory_utilization),
            ("--max-num-seqs", spec.max_num_seqs),
            ("--max-model-len", spec.max_model_len),
            ("--max-num-batched-tokens", spec.max_num_batched_tokens),
            ("--quantization", spec.quantization),
            ("--dtype", spec.dtype),
            ("--seed", spec.seed if spec.seed is not None else seed),
        ]
        cmd += _flags(optional)
        if spec.enable_prefix_caching is not None:
            cmd.append(
                "--enable-prefix-caching" if spec.enable_prefix_caching else "--no-enable-prefix-caching"
            )
        cmd += spec.args
        return LaunchSpec(
            cmd=cmd,
            env={**_gpu_env(spec.gpus), **spec.env},
            health_url=health,
            base_url=base,
            metrics_url=f"{base}/metrics",
            served_model=name,
            startup_timeout_s=spec.startup_timeout_s,
            gpus=list(spec.gpus),
        )


class TransformersLauncher:
    """`transformers serve MODEL --continuous-batching ...` (no /metrics endpoint)."""

    def build(
        self, spec: TransformersEngine, *, name: str, port: int, host: str = LOOPBACK, seed: int = 0
    ) -> LaunchSpec:
        base, health = _urls(host, port)
        # a forced model is loaded at start-up (health then means "ready") and serves every request
        model = ["--force-model", spec.model] if spec.model_arg == "flag" else [spec.model]
        cmd = [*spec.argv_prefix("transformers"), "serve", *model]
        cmd += ["--host", host, "--port", str(port)]
        if spec.continuous_batching:
            cmd.append("--continuous-batching")
        if spec.cuda_graph is not None:
            cmd.append("--cb-use-cuda-graph" if spec.cuda_graph else "--no-cb-use-cuda-graph")
        optional: list[tuple[str, object]] = [
            ("--device", spec.device),
            ("--dtype", spec.dtype),
            ("--attn-implementation", spec.attn_implementation),
            ("--quantization", spec.quantization),
            ("--default-seed", spec.seed if spec.seed is not None else seed),
        ]
        cmd += _flags(optional)
        cmd += spec.args
        return LaunchSpec(
            cmd=cmd,
            env={**_gpu_env(spec.gpus), **spec.env},
            health_url=health,
            base_url=base,
            metrics_url=None,
            served_model=spec.model,
            startup_timeout_s=spec.startup_timeout_s,
            gpus=list(spec.gpus),
        )


register_launcher("sim", SimLauncher())
register_launcher("vllm", VllmLauncher())
register_launcher("transformers", TransformersLauncher())
