"""Gateway configuration: YAML validated by pydantic, unknown keys and bad references fail loudly."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from system.config import ConfigError, StrictModel, load_yaml_model

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Names a client can send as `model` that never mean one expert.
RESERVED_MODEL_NAMES = frozenset({"auto"})


class ExpertConfig(StrictModel):
    """One upstream OpenAI-compatible server."""

    name: str = Field(description="Routing name; a request with this `model` goes straight to this expert.")
    url: str = Field(description="Base URL without /v1, e.g. http://127.0.0.1:9001")
    model: str | None = Field(
        default=None,
        description="Served model name; when set, the request's `model` field is rewritten to it.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(f"expert name {v!r} must match {_NAME_RE.pattern}")
        if v in RESERVED_MODEL_NAMES:
            raise ValueError(f"expert name {v!r} is reserved")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"expert url {v!r} must start with http:// or https:// and name a host")
        v = v.rstrip("/")
        if v.endswith("/v1"):
            raise ValueError(f"expert url {v!r} must be the server root, without /v1")
        return v


class ClusterPolicyConfig(StrictModel):
    """The paper's policy: classify the prompt, send it to its cluster's expert."""

    kind: Literal["cluster"]


class ClusterSpillPolicyConfig(StrictModel):
    """Cluster affinity, but spill to the least-loaded expert when the chosen one is too busy."""

    kind: Literal["cluster_spill"]
    spill_threshold: int = Field(
        default=64, ge=1, description="Spill when the cluster's expert has at least this many outstanding."
    )


class SinglePolicyConfig(StrictModel):
    """Baseline: every request goes to one expert."""

    kind: Literal["single"]
    expert: str | None = Field(default=None, description="Expert name (default: the first one).")


class RoundRobinPolicyConfig(StrictModel):
    kind: Literal["round_robin"]


class LeastOutstandingPolicyConfig(StrictModel):
    kind: Literal["least_outstanding"]


PolicyConfig = Annotated[
    ClusterPolicyConfig
    | ClusterSpillPolicyConfig
    | SinglePolicyConfig
    | RoundRobinPolicyConfig
    | LeastOutstandingPolicyConfig,
    Field(discriminator="kind"),
]
CLASSIFYING_POLICIES = frozenset({"cluster", "cluster_spill"})


class LimitsConfig(StrictModel):
    max_in_flight: int = Field(
        default=4096, ge=1, description="Proxied requests at once; more get 503 with Retry-After."
    )
    max_connections: int = Field(
        default=8192,
        ge=1,
        description="Client connections at once; a request on one more gets 503 with Retry-After "
        "(/health and /metrics are still answered). Lowered at start-up to what the fd limit allows.",
    )
    idle_timeout_s: float = Field(
        default=30.0, gt=0, description="Close a client connection idle this long (new or keep-alive)."
    )
    header_timeout_s: float = Field(
        default=10.0, gt=0, description="Whole request head (line + headers) within this, else 408 + close."
    )
    body_timeout_s: float = Field(
        default=30.0, gt=0, description="Whole request body within this after the headers, else 408 + close."
    )
    max_header_bytes: int = Field(
        default=32 * 1024, ge=1024, description="Request line + headers larger than this: 431 + close."
    )
    max_headers: int = Field(default=100, ge=1, description="More request headers than this: 431 + close.")
    max_json_depth: int = Field(default=64, ge=2, description="Deeper JSON nesting in a body: 400.")
    max_number_digits: int = Field(
        default=100, ge=10, description="A JSON number with more digits than this: 400."
    )
    upstream_keepalive_s: float = Field(
        default=4.0,
        gt=0,
        description="Close pooled upstream connections idle this long; keep it below the experts' own "
        "keep-alive timeout (uvicorn/vLLM: 5 s), so a pooled connection is never closed under a request.",
    )
    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="Larger request bodies get 413.")
    connect_timeout_s: float = Field(default=5.0, gt=0, description="Upstream TCP connect timeout (-> 504).")
    read_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="Longest upstream silence: before headers or between chunks (-> 504).",
    )
    upstream_connections: int = Field(
        default=10_000, ge=1, description="Connection pool size of the one shared upstream session."
    )
    retry_after_s: int = Field(default=1, ge=0, description="Retry-After value sent with 503 (overloaded).")
    retry_connect_errors: bool = Field(
        default=True, description="Retry once on the next candidate when the connect fails."
    )
    classify_max_chars: int = Field(
        default=4000, ge=1, description="Only the first N characters of the prompt are classified."
    )


class HealthConfig(StrictModel):
    interval_s: float = Field(default=2.0, gt=0, description="Active health check period per expert.")
    timeout_s: float = Field(default=1.0, gt=0)
    path: str = Field(default="/health")
    unhealthy_after: int = Field(default=1, ge=1, description="Consecutive failed checks -> unhealthy.")


class BreakerConfig(StrictModel):
    failure_threshold: int = Field(default=3, ge=1, description="Consecutive failures that open the breaker.")
    open_s: float = Field(default=5.0, gt=0, description="Seconds open before one trial request.")


class ServerConfig(StrictModel):
    """How the gateway process serves (docs/GATEWAY.md, "Server options"; measured in docs/PERFORMANCE.md)."""

    workers: int = Field(
        default=1,
        ge=1,
        description="Processes sharing the port; each has its own classifier, health and breaker state.",
    )
    upstream_client: Literal["raw", "aiohttp"] = Field(
        default="raw",
        description="raw: httptools keep-alive pool writing chunks to the client; aiohttp: ClientSession.",
    )
    loop: Literal["uvloop", "asyncio"] = "uvloop"
    accept: Literal["batch", "single"] = Field(
        default="batch",
        description="uvloop only. batch: accept every waiting connection per loop wake-up (as asyncio does); "
        "single: libuv's one connection per loop iteration, which leaves connection bursts waiting seconds "
        "under load (system/acceptloop.py).",
    )


class GatewayConfig(StrictModel):
    """Top-level gateway YAML (see docs/GATEWAY.md)."""

    policy: PolicyConfig
    classifier: Path | None = Field(default=None, description="Directory of a saved PromptClassifier.")
    experts: list[ExpertConfig] = Field(min_length=1)
    cluster_map: dict[int, str] | list[str] | None = Field(
        default=None, description="cluster -> expert name; default: cluster i -> experts[i % n]."
    )
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)

    @model_validator(mode="after")
    def _references(self) -> GatewayConfig:
        names = [e.name for e in self.experts]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate expert names: {', '.join(dupes)}")
        known = set(names)
        if isinstance(self.policy, SinglePolicyConfig) and self.policy.expert not in (None, *known):
            raise ValueError(
                f"policy.expert {self.policy.expert!r} is not an expert (have: {', '.join(names)})"
            )
        for cluster, name in self.cluster_items():
            if name not in known:
                raise ValueError(
                    f"cluster_map[{cluster}] = {name!r} is not an expert (have: {', '.join(names)})"
                )
        if self.policy.kind in CLASSIFYING_POLICIES and self.classifier is None:
            raise ValueError(f"policy {self.policy.kind!r} needs `classifier: <directory>`")
        return self

    def cluster_items(self) -> list[tuple[int, str]]:
        if self.cluster_map is None:
            return []
        if isinstance(self.cluster_map, list):
            return list(enumerate(self.cluster_map))
        return sorted(self.cluster_map.items())

    def expert_for_cluster(self, k: int) -> list[str]:
        """cluster -> expert name for clusters 0..k-1 (explicit map, or experts in order, wrapping)."""
        names = [e.name for e in self.experts]
        if self.cluster_map is None:
            return [names[c % len(names)] for c in range(k)]
        mapping = dict(self.cluster_items())
        missing = [c for c in range(k) if c not in mapping]
        if missing:
            raise ConfigError(f"cluster_map has no expert for clusters {missing} (classifier has k={k})")
        return [mapping[c] for c in range(k)]


def resolve_classifier_path(cfg: GatewayConfig, config_path: Path | None) -> GatewayConfig:
    """Relative classifier paths: the working directory first, then the config file's directory."""
    if cfg.classifier is None or cfg.classifier.is_absolute():
        candidates = [cfg.classifier] if cfg.classifier is not None else []
    else:
        candidates = [Path.cwd() / cfg.classifier]
        if config_path is not None:
            candidates.append(config_path.resolve().parent / cfg.classifier)
    for c in candidates:
        if c.is_dir():
            return cfg.model_copy(update={"classifier": c.resolve()})
    if candidates:
        tried = ", ".join(str(c) for c in candidates)
        raise ConfigError(
            f"classifier directory not found (tried {tried}); train one with "
            "`expert-router classifier train --workload labelled --k K --out DIR`"
        )
    return cfg


def load_config(path: str | Path) -> GatewayConfig:
    """Read and validate a gateway YAML file; raises ConfigError with one line per problem."""
    p = Path(path)
    return resolve_classifier_path(load_yaml_model(p, GatewayConfig), p)
