"""Command-line options of the load test (added to Locust's parser) and their validated settings."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

WORKLOADS = ("labelled", "sharegpt", "synthetic")
ENDPOINTS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
SHAPES = ("steps", "constant", "spike")
DEFAULT_STEPS = "1,10,50,100,250,500,750,1000"


class OptionError(ValueError):
    """An option value is invalid; the message names the option."""


def add_arguments(parser: Any) -> None:
    """Register our options on Locust's parser (they also show in the web UI's custom parameters)."""
    g = parser.add_argument_group("expert-router", "LLM streaming load test options (loadtests/README.md)")
    a = g.add_argument
    a("--records-dir", default="", help="Write per-request records to DIR/records-<worker>.csv")
    a("--workload", default="labelled", choices=WORKLOADS, help="Prompt source (system.workload)")
    a("--dataset", default="", help="Dataset path (sharegpt JSON); default: the packaged file")
    a("--num-prompts", type=int, default=1000, help="Prompts loaded from the workload")
    a(
        "--workload-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Extra workload spec option, e.g. prompt_tokens=200 (repeatable)",
    )
    a("--max-tokens", type=int, default=1024, help="Cap on max_tokens (= reference output length)")
    a(
        "--ignore-eos",
        default=True,
        action=argparse.BooleanOptionalAction,
        help="Send vLLM's ignore_eos: exactly max_tokens are generated (--no-ignore-eos: strict servers)",
    )
    a("--endpoint", default="chat", choices=sorted(ENDPOINTS), help="chat or completions API")
    a("--model", default="auto", help="Model name; 'auto' falls back to the first of /v1/models if unknown")
    a("--think-time", type=float, default=0.0, help="Seconds a user waits between requests")
    a("--seed", type=int, default=0, help="Seed for prompt order and the workload")
    a("--request-timeout", type=float, default=300.0, help="Socket timeout per read (s)")
    a("--shape", default="", choices=["", *SHAPES], env_var="LOCUST_SHAPE", help="Load shape (else -u/-r/-t)")
    a("--steps", default=DEFAULT_STEPS, help="steps shape: user counts, comma separated")
    a("--step-seconds", type=float, default=60.0, help="steps shape: hold time per step (s)")
    a("--shape-spawn-rate", type=float, default=0.0, help="Shapes: users/s (0: reach each level in ~1 s)")
    a("--shape-users", type=int, default=10, help="constant/spike shape: base users")
    a("--shape-seconds", type=float, default=60.0, help="constant/spike shape: total duration (s)")
    a("--spike-users", type=int, default=100, help="spike shape: users during the spike")
    a("--spike-at", type=float, default=20.0, help="spike shape: spike start (s from test start)")
    a("--spike-seconds", type=float, default=10.0, help="spike shape: spike duration (s)")
    a("--cpu-warn-percent", type=float, default=90.0, help="Warn when a worker's CPU exceeds this")
    a("--lag-warn-ms", type=float, default=20.0, help="Warn when the gevent loop lag exceeds this")


def parse_steps(text: str) -> list[int]:
    try:
        steps = [int(s) for s in str(text).replace(" ", "").split(",") if s]
    except ValueError as e:
        raise OptionError(f"--steps must be comma-separated integers, got {text!r}") from e
    if not steps or any(s < 0 for s in steps):
        raise OptionError(f"--steps needs at least one user count >= 0, got {text!r}")
    return steps


def _parse_kv(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = str(item).partition("=")
        if not sep or not key:
            raise OptionError(f"--workload-option must be KEY=VALUE, got {item!r}")
        value: Any = raw
        for conv in (int, float):
            try:
                value = conv(raw)
                break
            except ValueError:
                continue
        out[key.strip()] = value
    return out


@dataclass(frozen=True)
class Settings:
    """The validated options one worker process runs with."""

    records_dir: str
    workload_spec: dict[str, Any] = field(hash=False)
    max_tokens: int
    ignore_eos: bool
    endpoint: str  # URL path
    model: str
    think_time: float
    seed: int
    request_timeout: float
    cpu_warn_percent: float
    lag_warn_ms: float

    @property
    def workload(self) -> str:
        return str(self.workload_spec["kind"])


def settings_from(opts: Any) -> Settings:
    """Validate parsed options (Locust's namespace) into Settings; raises OptionError."""
    if opts.workload not in WORKLOADS:
        raise OptionError(f"--workload must be one of {', '.join(WORKLOADS)}, got {opts.workload!r}")
    if opts.endpoint not in ENDPOINTS:
        raise OptionError(f"--endpoint must be one of {', '.join(ENDPOINTS)}, got {opts.endpoint!r}")
    for name in ("num_prompts", "max_tokens"):
        if int(getattr(opts, name)) < 1:
            raise OptionError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(opts, name)}")
    if float(opts.think_time) < 0 or float(opts.request_timeout) <= 0:
        raise OptionError("--think-time must be >= 0 and --request-timeout > 0")
    spec: dict[str, Any] = {"kind": opts.workload, "n": int(opts.num_prompts), "seed": int(opts.seed)}
    if opts.dataset:
        spec["path"] = str(opts.dataset)
    spec.update(_parse_kv(list(opts.workload_option or [])))
    if opts.shape == "steps":
        parse_steps(opts.steps)
    return Settings(
        records_dir=str(opts.records_dir or ""),
        workload_spec=spec,
        max_tokens=int(opts.max_tokens),
        ignore_eos=bool(opts.ignore_eos),
        endpoint=ENDPOINTS[opts.endpoint],
        model=str(opts.model or "auto"),
        think_time=float(opts.think_time),
        seed=int(opts.seed),
        request_timeout=float(opts.request_timeout),
        cpu_warn_percent=float(opts.cpu_warn_percent),
        lag_warn_ms=float(opts.lag_warn_ms),
    )
