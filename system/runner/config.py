"""Experiment YAML models: configurations (routed | single), workload, load steps, Locust, SLOs, telemetry."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, ValidationError, field_validator, model_validator

from system.config import StrictModel, load_yaml_model
from system.engines.base import EngineSpec
from system.engines.external import normalize_url
from system.telemetry.dcgm import DcgmTarget

_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
CLASSIFYING_POLICIES = {"cluster", "cluster_spill"}
IGNORE_EOS_ENGINES = {"sim", "vllm"}  # engines that accept vLLM's `ignore_eos` request field
AUTO_RAMP_S = 2.0  # warmup_s auto: closed-loop users all start within this (unless spawn_rate says otherwise)


def _slug(v: str, what: str) -> str:
    # names become directory names and URL path parts: keep them boring
    if not _SLUG.match(v):
        raise ValueError(f"{what} {v!r} must match {_SLUG.pattern} (letters, digits, _ . -)")
    return v


class WorkloadSpec(StrictModel):
    """Prompt source, as `system.workload.load_prompts` takes it (see docs/CONTRACTS.md)."""

    kind: str = "labelled"  # labelled | sharegpt | synthetic (any registered source)
    n: int = Field(default=1000, ge=1)
    seed: int | None = Field(default=None, ge=0)  # default: the experiment seed
    path: str | None = None  # sharegpt JSON
    prompt_tokens: int | None = Field(default=None, ge=1)  # synthetic
    output_tokens: int | None = Field(default=None, ge=1)  # synthetic
    distribution: Literal["fixed", "uniform"] | None = None  # synthetic
    options: dict[str, Any] = Field(default_factory=dict)  # any other option of the source

    @model_validator(mode="after")
    def _known_source(self) -> WorkloadSpec:
        # fail at load time, not in every Locust step: the kind and option names must exist
        from system.workload import SOURCES

        if self.kind not in SOURCES:
            raise ValueError(f"unknown workload kind {self.kind!r}; known: {sorted(SOURCES)}")
        valid = set(SOURCES[self.kind].options)
        given = set(self.model_dump(exclude_none=True, exclude={"kind", "n", "seed", "options"})) | set(
            self.options
        )
        unknown = sorted(given - valid)
        if unknown:
            raise ValueError(
                f"workload kind {self.kind!r} has no option(s) {unknown}; valid: {sorted(valid)}"
            )
        return self

    def to_spec(self, default_seed: int) -> dict[str, Any]:
        """The `load_prompts` spec: flat, unset options left to the source's defaults."""
        spec = self.model_dump(exclude_none=True, exclude={"options"})
        spec.update(self.options)
        spec.setdefault("seed", default_seed)
        return spec


class LocustSpec(StrictModel):
    """How the load generator runs (Locust headless in a subprocess, constant users per step)."""

    processes: int = Field(
        default=1, ge=1
    )  # `--processes N`: one Locust saturates near 1,000 streams on 2 cores
    extra_args: list[str] = Field(default_factory=list)  # appended to the locust command line
    env: dict[str, str] = Field(default_factory=dict)


class SLOs(StrictModel):
    """Per-request service-level objectives; a request meeting all set ones counts toward goodput."""

    ttft_ms: float | None = Field(default=None, gt=0)
    tpot_ms: float | None = Field(default=None, gt=0)
    e2e_ms: float | None = Field(default=None, gt=0)


class ClassifierSpec(StrictModel):
    """A classifier to train into the run directory (or `path` to a trained one)."""

    path: str | None = None  # an existing classifier directory: no training
    k: int | None = Field(default=None, ge=2)  # default: number of experts
    train_n: int = Field(default=2000, ge=2)
    svd_components: int | None = Field(default=None, ge=0)  # default: the classifier's; 0 = no SVD
    # training prompts; default: the experiment workload with n=train_n and seed+1 (unseen test prompts)
    workload: WorkloadSpec | None = None


class GatewaySpec(StrictModel):
    """The routing gateway in front of the experts (`expert-router gateway --config ...`), or, with `url`,
    a gateway that already runs (nothing launched; its experts must then be `external` too)."""

    policy: dict[str, Any] = Field(default_factory=dict)  # {kind: cluster|cluster_spill|single|..., options}
    classifier: ClassifierSpec | None = None
    # any other gateway YAML keys (limits, timeouts, ...) passed through unchanged
    extra: dict[str, Any] = Field(default_factory=dict)
    startup_timeout_s: float = Field(default=60.0, gt=0)
    # an external gateway: its root URL, its Prometheus text, the `model` Locust sends (ours: "auto";
    # a model-name router such as the vLLM production-stack router wants the served model name)
    url: str | None = None
    metrics_url: str | None = None
    model: str = "auto"
    health_path: str = "/health"

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if v is None else normalize_url(v, "gateway url")

    @property
    def external(self) -> bool:
        return self.url is not None

    @field_validator("policy")
    @classmethod
    def _policy_kind(cls, v: dict[str, Any]) -> dict[str, Any]:
        if v and not isinstance(v.get("kind"), str):
            raise ValueError(
                "policy needs a string `kind` (cluster, cluster_spill, single, round_robin, ...)"
            )
        if v:
            check_policy(v)
        return v


def check_policy(policy: dict[str, Any]) -> None:
    """Fail at load time (validate, --dry-run) on an unknown policy kind or option, not at gateway start."""
    from system.gateway.config import PolicyConfig
    from system.gateway.policies import POLICIES

    kind = policy.get("kind")
    if kind not in POLICIES:
        raise ValueError(f"unknown gateway policy {kind!r}; known: {', '.join(sorted(POLICIES))}")
    try:
        TypeAdapter(PolicyConfig).validate_python(policy)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'][1:]) or 'policy'}: {err['msg']}" for err in e.errors()
        )
        raise ValueError(f"gateway policy {kind!r}: {problems}") from None


def check_sim_profile(profile: str) -> None:
    """An unknown sim profile (name or JSON file) fails at load time with the profile loader's message."""
    from system.engines.sim.profilefiles import resolve_profile

    try:
        resolve_profile(profile)
    except Exception as e:  # UnknownProfileError (a KeyError), a missing or malformed JSON file
        text = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
        msg = (text.splitlines() or [type(e).__name__])[0]
        raise ValueError(msg if profile in msg else f"sim profile {profile!r}: {msg}") from None


class ExpertSpec(StrictModel):
    name: str
    engine: EngineSpec

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _slug(v, "expert name")

    @model_validator(mode="after")
    def _known_profile(self) -> ExpertSpec:
        if self.engine.kind == "sim":
            check_sim_profile(self.engine.profile)  # type: ignore[union-attr]
        return self


class Configuration(StrictModel):
    """One arm of the comparison: `routed` (N experts behind the gateway) or `single` (one engine)."""

    name: str
    topology: Literal["routed", "single"]
    experts: list[ExpertSpec] = Field(min_length=1)
    gateway: GatewaySpec = Field(default_factory=GatewaySpec)
    # single only: also go through the gateway (policy `single`) so both arms pay the same proxy hop
    via_gateway: bool = True
    # several experts on one GPU (each engine capping its own memory share, e.g. transformers serve
    # --cb-max-memory-percent or vLLM --gpu-memory-utilization); off by default so a typo'd id fails loudly
    share_gpus: bool = False
    # DCGM exporters whose GPUs this configuration uses (cluster GPU telemetry into gpu.csv, source "dcgm")
    dcgm: list[DcgmTarget] = Field(default_factory=list)
    description: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _slug(v, "configuration name")

    @model_validator(mode="after")
    def _check(self) -> Configuration:
        names = [e.name for e in self.experts]
        if len(set(names)) != len(names):
            raise ValueError(f"expert names must be unique in configuration {self.name!r}: {names}")
        if self.topology == "single" and len(self.experts) != 1:
            raise ValueError(
                f"single topology {self.name!r} takes exactly one expert, got {len(self.experts)}"
            )
        if self.topology == "routed" and not self.via_gateway:
            raise ValueError(f"routed topology {self.name!r} needs the gateway (via_gateway: true)")
        if self.gateway.external:
            if not self.via_gateway:
                raise ValueError(f"{self.name!r}: gateway.url is set but via_gateway is false")
            local = [e.name for e in self.experts if e.engine.kind != "external"]
            if local:
                # a running gateway cannot be told about servers the harness starts on this host
                raise ValueError(
                    f"{self.name!r}: gateway.url points at a running gateway, so its experts must be "
                    f"engine kind `external` too; launched here: {local}"
                )
            if self.gateway.policy or self.gateway.classifier is not None or self.gateway.extra:
                raise ValueError(
                    f"{self.name!r}: policy/classifier/extra configure a gateway the harness launches; "
                    "with gateway.url they belong to the running gateway's own config"
                )
        elif not self.gateway.policy:
            kind = "cluster" if self.topology == "routed" else "single"
            self.gateway.policy = {"kind": kind}
        if self.needs_classifier and self.gateway.classifier is None:
            self.gateway.classifier = ClassifierSpec()
        used: dict[int, str] = {}
        for e in self.experts:
            for g in getattr(e.engine, "gpus", []):
                if g in used and not self.share_gpus:
                    raise ValueError(f"GPU {g} is given to both {used[g]!r} and {e.name!r} in {self.name!r}")
                used[g] = e.name
        return self

    @property
    def accepts_ignore_eos(self) -> bool:
        """Whether every engine takes vLLM's `ignore_eos` (sim and vLLM do; transformers serve rejects it)."""
        return all(
            e.engine.ignore_eos if e.engine.kind == "external" else e.engine.kind in IGNORE_EOS_ENGINES
            for e in self.experts
        )

    @property
    def uses_gateway(self) -> bool:
        return self.topology == "routed" or self.via_gateway

    @property
    def needs_classifier(self) -> bool:
        return (
            self.uses_gateway
            and not self.gateway.external
            and self.gateway.policy.get("kind") in CLASSIFYING_POLICIES
        )


class TelemetrySpec(StrictModel):
    scrape_interval_s: float = Field(default=1.0, gt=0)  # Prometheus /metrics of engines + gateway
    gpu_interval_s: float = Field(default=1.0, gt=0)  # NVML
    procs_interval_s: float = Field(default=1.0, gt=0)  # CPU / RSS of our server processes
    scrape_timeout_s: float = Field(default=0.8, gt=0)
    # histogram `_bucket` (and `_created`) samples are most of /metrics; off by default, `_sum`/`_count` stay
    keep_histogram_buckets: bool = False
    # DCGM exporters scraped for every configuration (added to each configuration's own `dcgm` list); when
    # any is set, gpu.csv holds their GPUs (source "dcgm") instead of this host's NVML GPUs
    dcgm: list[DcgmTarget] = Field(default_factory=list)


def _positive_distinct(v: list[Any], what: str) -> list[Any]:
    if any(x <= 0 for x in v) or len(set(v)) != len(v):
        raise ValueError(f"{what} must be distinct positive numbers, got {v}")
    return v


class UsersLoad(StrictModel):
    """Closed loop: each step holds N concurrent users (each sends its next request when one ends)."""

    kind: Literal["users"] = "users"
    users: list[int] = Field(min_length=1)

    @field_validator("users")
    @classmethod
    def _users(cls, v: list[int]) -> list[int]:
        return _positive_distinct(v, "users")


class RateLoad(StrictModel):
    """Open loop: each step sends requests at R/s from one seeded Poisson (or gamma) arrival schedule."""

    kind: Literal["rate"]
    rates: list[float] = Field(min_length=1)  # requests/s
    max_concurrency: int | None = Field(default=None, ge=1)  # cap on requests in flight (late arrivals)
    burstiness: float = Field(default=1.0, gt=0)  # gamma shape: 1 = Poisson, < 1 burstier

    @field_validator("rates")
    @classmethod
    def _rates(cls, v: list[float]) -> list[float]:
        return _positive_distinct(v, "rates")


class SweepStop(StrictModel):
    """Optional early stop of a sweep's interpolated rates (both off by default: all K rates run)."""

    # saturated: throughput grew by less than this fraction of the offered-load increase since the last rate
    plateau: float | None = Field(default=None, gt=0, le=1)
    # SLO broken: fewer than this fraction of the finished requests met every configured SLO
    slo_attainment: float | None = Field(default=None, gt=0, le=1)


class SweepLoad(StrictModel):
    """Saturation search per configuration, GuideLLM-style: a synchronous step (one user), a maximum-
    throughput probe, then `rates` open-loop rates evenly spaced between the two measured request rates."""

    kind: Literal["sweep"]
    rates: int = Field(default=5, ge=1)  # K interpolated rates
    throughput_users: int = Field(default=256, ge=2)  # closed-loop probe at this concurrency ...
    throughput_rate: float | None = Field(default=None, gt=0)  # ... or an open-loop probe at this rate
    max_concurrency: int | None = Field(default=None, ge=1)  # for the rate steps
    burstiness: float = Field(default=1.0, gt=0)
    stop: SweepStop = Field(default_factory=SweepStop)


LoadSpec = Annotated[UsersLoad | RateLoad | SweepLoad, Field(discriminator="kind")]


class ExperimentConfig(StrictModel):
    """An experiment file (see docs/EXPERIMENTS.md)."""

    name: str
    description: str = ""
    seed: int = 0
    workload: WorkloadSpec = Field(default_factory=WorkloadSpec)
    # the load steps: `load: {kind: users|rate|sweep, ...}`; `users: [...]` is short for kind users
    load: LoadSpec
    step_duration_s: float = Field(gt=0)
    # records ending in the first warmup_s of a step are not measured; "auto": per step, the larger of the
    # users' spawn ramp and the step's median E2E (capped at half the step; see docs/EXPERIMENTS.md)
    warmup_s: float | Literal["auto"] = Field(default="auto")
    # users spawned per second: one number, a {users: rate} map, or unset = all users within half the warm-up
    # (within AUTO_RAMP_S with warmup_s auto)
    spawn_rate: float | dict[int, float] | None = None
    cooldown_s: float = Field(default=2.0, ge=0)  # idle gap between steps so queues drain
    repetitions: int = Field(default=1, ge=1)
    locust: LocustSpec = Field(default_factory=LocustSpec)
    slos: SLOs = Field(default_factory=SLOs)
    telemetry: TelemetrySpec = Field(default_factory=TelemetrySpec)
    configurations: list[Configuration] = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _slug(v, "experiment name")

    @model_validator(mode="before")
    @classmethod
    def _users_shorthand(cls, data: Any) -> Any:
        # today's `users: [...]` is `load: {kind: users, users: [...]}`
        if isinstance(data, dict) and "users" in data and data["users"] is None:
            data = {k: v for k, v in data.items() if k != "users"}
        if isinstance(data, dict) and "users" in data:
            if "load" in data:
                raise ValueError("give either `users: [...]` or `load: {...}`, not both")
            data = dict(data)
            data["load"] = {"kind": "users", "users": data.pop("users")}
        return data

    @property
    def users(self) -> list[int] | None:
        """The closed-loop user counts of a `users` load (None for rate and sweep loads)."""
        return list(self.load.users) if isinstance(self.load, UsersLoad) else None

    @model_validator(mode="after")
    def _check(self) -> ExperimentConfig:
        if self.warmup_s != "auto" and self.warmup_s < 0:
            raise ValueError(f"warmup_s must be >= 0 or 'auto', got {self.warmup_s}")
        if self.warmup_s != "auto" and self.warmup_s >= self.step_duration_s:
            raise ValueError(f"warmup_s ({self.warmup_s}) must be shorter than step_duration_s")
        names = [c.name for c in self.configurations]
        if len(set(names)) != len(names):
            raise ValueError(f"configuration names must be unique: {names}")
        if isinstance(self.spawn_rate, dict):
            missing = [u for u in self.closed_loop_users if u not in self.spawn_rate]
            if missing:
                raise ValueError(f"spawn_rate map has no rate for users {missing}")
            if any(r <= 0 for r in self.spawn_rate.values()):
                raise ValueError("spawn rates must be > 0")
        elif self.spawn_rate is not None and self.spawn_rate <= 0:
            raise ValueError("spawn_rate must be > 0")
        return self

    @property
    def closed_loop_users(self) -> list[int]:
        """Every closed-loop user count the load can run (a sweep's synchronous and throughput probes)."""
        load = self.load
        if isinstance(load, UsersLoad):
            return list(load.users)
        if isinstance(load, SweepLoad):
            return [1] + ([load.throughput_users] if load.throughput_rate is None else [])
        return []

    def spawn_rate_for(self, users: int) -> float:
        if isinstance(self.spawn_rate, dict):
            return float(self.spawn_rate.get(users, max(1.0, users / AUTO_RAMP_S)))
        if self.spawn_rate is not None:
            return float(self.spawn_rate)
        if self.warmup_s == "auto":
            return float(max(1.0, users / AUTO_RAMP_S))
        # everyone is in before the measured window starts
        return float(max(1.0, users / max(self.warmup_s / 2, 0.5)))

    def select(self, only: list[str] | None) -> list[Configuration]:
        if not only:
            return list(self.configurations)
        known = {c.name for c in self.configurations}
        unknown = [n for n in only if n not in known]
        if unknown:
            raise ValueError(f"--only {unknown}: no such configuration; known: {sorted(known)}")
        return [c for c in self.configurations if c.name in only]

    def resolved(self) -> dict[str, Any]:
        """The fully defaulted config as plain JSON data (what the manifest records)."""
        data = self.model_dump(mode="json")
        if self.users is not None:
            data["users"] = self.users  # readers of manifests written before `load` existed
        return data

    def fingerprint(self) -> str:
        """Hash of the resolved config minus the sweep lists, to detect a changed config on resume."""
        data = self.resolved()
        for key in ("users", "repetitions", "configurations", "description"):
            data.pop(key, None)
        load = data.get("load") or {}
        if load.get("kind") in ("users", "rate"):  # the step lists may grow on resume
            load.pop(load["kind"] if load["kind"] == "users" else "rates", None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def load_experiment(path: str | Path) -> ExperimentConfig:
    """Read and validate an experiment YAML file (raises ConfigError with one line per problem)."""
    return load_yaml_model(path, ExperimentConfig)
