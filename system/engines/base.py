"""Engine specs (sim, vllm, transformers, external) and the `Launcher` plug-in that starts one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from pydantic import Field, field_validator, model_validator

from system.config import StrictModel
from system.engines.external import ExternalEngine, ExternalLauncher
from system.processes import ServerProcess

LOOPBACK = "127.0.0.1"


class _EngineBase(StrictModel):
    """Fields every engine kind shares."""

    # extra command-line arguments appended verbatim (engine-specific flags we do not model)
    args: list[str] = Field(default_factory=list)
    # extra environment variables for the server process
    env: dict[str, str] = Field(default_factory=dict)
    startup_timeout_s: float = Field(default=120.0, gt=0)
    # short requests sent to the engine after it is healthy and before any measurement: real engines
    # compile kernels / capture CUDA graphs / allocate the KV cache on their first requests (seen: 11 s on
    # transformers serve's first continuous-batching request), which must not land in the first step's TTFT
    warmup_requests: int = Field(default=0, ge=0)


class SimEngine(_EngineBase):
    """The built-in simulator (`expert-router sim`); its "GPUs" are part of the profile, none are used."""

    kind: Literal["sim"] = "sim"
    profile: str
    seed: int | None = None  # default: experiment seed + expert index, so experts differ but reproducibly
    stream_interval: int | None = Field(default=None, ge=1)
    startup_timeout_s: float = Field(default=60.0, gt=0)
    # a simulated GPU id (at most one): with the configuration's share_gpus, sim experts given the same id
    # run in one sim process that time-slices one simulated GPU between them (docs/SIMULATOR.md)
    gpus: list[int] = Field(default_factory=list, max_length=1)
    memory_fraction: float | None = Field(default=None, gt=0, le=1)  # the engine's GPU memory share


class _GpuEngine(_EngineBase):
    model: str  # HF id or local path
    gpus: list[int] = Field(default_factory=list)  # CUDA_VISIBLE_DEVICES; empty = inherit
    # executable: a name on PATH, or an argv prefix (tests use [python, -m, system.bench.fake_upstream])
    executable: str | list[str] = ""
    startup_timeout_s: float = Field(default=900.0, gt=0)  # weights loading + CUDA graph capture
    warmup_requests: int = Field(default=2, ge=0)

    @field_validator("gpus")
    @classmethod
    def _unique_gpus(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v) or any(g < 0 for g in v):
            raise ValueError(f"gpus must be distinct non-negative ids, got {v}")
        return v

    def argv_prefix(self, default: str) -> list[str]:
        exe = self.executable or default
        return [exe] if isinstance(exe, str) else list(exe)


class VllmEngine(_GpuEngine):
    """`vllm serve MODEL ...` (OpenAI server); tensor parallel size defaults to the number of GPUs."""

    kind: Literal["vllm"] = "vllm"
    tensor_parallel_size: int | None = Field(default=None, ge=1)
    gpu_memory_utilization: float | None = Field(default=0.90, gt=0, le=1)
    max_num_seqs: int | None = Field(default=None, ge=1)
    max_model_len: int | None = Field(default=None, ge=1)
    max_num_batched_tokens: int | None = Field(default=None, ge=1)
    quantization: str | None = None  # e.g. awq, gptq, fp8, bitsandbytes
    dtype: str | None = None  # auto, bfloat16, float16
    seed: int | None = None
    enable_prefix_caching: bool | None = None

    @model_validator(mode="after")
    def _tp_fits(self) -> VllmEngine:
        if self.tensor_parallel_size and self.gpus and self.tensor_parallel_size > len(self.gpus):
            raise ValueError(
                f"tensor_parallel_size {self.tensor_parallel_size} needs as many gpus, got {self.gpus}"
            )
        return self

    @property
    def tp(self) -> int:
        return self.tensor_parallel_size or max(1, len(self.gpus))


class TransformersEngine(_GpuEngine):
    """`transformers serve MODEL --continuous-batching ...` (transformers >= 5; 4.5x: model_arg: flag)."""

    kind: Literal["transformers"] = "transformers"
    # transformers 5 takes the model to preload as a positional FORCE_MODEL argument (checked on 5.24);
    # 4.5x spelled it `--force-model MODEL`
    model_arg: Literal["positional", "flag"] = "positional"
    continuous_batching: bool = True
    cuda_graph: bool | None = None  # --cb-use-cuda-graph / --no-cb-use-cuda-graph
    device: str | None = None  # --device (auto, cuda:0, cpu)
    dtype: str | None = None
    attn_implementation: str | None = None  # e.g. sdpa, flash_attention_2, sdpa_paged
    quantization: Literal["bnb-4bit", "bnb-8bit"] | None = None
    seed: int | None = None


EngineSpec = Annotated[
    SimEngine | VllmEngine | TransformersEngine | ExternalEngine, Field(discriminator="kind")
]


@dataclass
class LaunchSpec:
    """Everything needed to start one engine server and talk to it."""

    cmd: list[str]
    env: dict[str, str]  # overrides on top of os.environ
    health_url: str
    base_url: str  # http://host:port (the OpenAI API is under /v1)
    metrics_url: str | None  # Prometheus text, None when the engine has none
    served_model: str  # the `model` name the server answers to
    startup_timeout_s: float
    gpus: list[int] = field(default_factory=list)
    # True: the server already runs elsewhere (engine kind `external`); `cmd` is empty, nothing is started
    external: bool = False


class Launcher(Protocol):
    """Turns an engine spec into a LaunchSpec. One per engine `kind`, registered in LAUNCHERS."""

    def build(
        self, spec: Any, *, name: str, port: int, host: str = LOOPBACK, seed: int = 0
    ) -> LaunchSpec: ...


LAUNCHERS: dict[str, Launcher] = {"external": ExternalLauncher()}


def register_launcher(kind: str, launcher: Launcher) -> None:
    """Add or replace the launcher for an engine kind (plug-in point for new engines)."""
    LAUNCHERS[kind] = launcher


def get_launcher(kind: str) -> Launcher:
    # import here so registering the built-in launchers never creates an import cycle
    from system.engines import launchers  # noqa: F401

    try:
        return LAUNCHERS[kind]
    except KeyError:
        raise ValueError(f"unknown engine kind {kind!r}; known: {sorted(LAUNCHERS)}") from None


def build_launch(spec: Any, *, name: str, port: int, host: str = LOOPBACK, seed: int = 0) -> LaunchSpec:
    """The LaunchSpec for `spec` (any engine kind) on `host:port`."""
    return get_launcher(spec.kind).build(spec, name=name, port=port, host=host, seed=seed)


def engine_process(
    launch: LaunchSpec, *, name: str, log_dir: Path, base_env: Mapping[str, str] | None = None
) -> ServerProcess:
    """A (not yet started) ServerProcess for a LaunchSpec, logging to `log_dir/<name>.log`."""
    import os

    env = dict(os.environ if base_env is None else base_env)
    env.update(launch.env)
    return ServerProcess(
        launch.cmd,
        name=name,
        health_url=launch.health_url,
        log_path=Path(log_dir) / f"{name}.log",
        env=env,
        startup_timeout_s=launch.startup_timeout_s,
    )
