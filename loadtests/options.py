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
    a(
        "--request-rate",
        type=float,
        default=0.0,
        env_var="LOCUST_REQUEST_RATE",
        help="Open loop: requests/s from one seeded arrival schedule (0: closed loop, -u users)",
    )
    a("--max-concurrency", type=int, default=0, help="Open loop: cap on requests in flight (0: none)")
    a("--burstiness", type=float, default=1.0, help="Open loop: gamma shape of the gaps (1.0 = Poisson)")
    a(
        "--arrival-workers",
        type=int,
        default=0,
        help="Open loop: processes sharing the schedule (0: --processes, else 1); set on distributed runs",
    )
    a("--late-ms", type=float, default=10.0, help="Open loop: a request sent later than this is 'late'")
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
    request_rate: float = 0.0  # > 0: open loop
    max_concurrency: int = 0  # 0: no cap
    burstiness: float = 1.0
    arrival_workers: int = 1
    late_ms: float = 10.0

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
    rate = float(getattr(opts, "request_rate", 0.0) or 0.0)
    if rate < 0 or float(getattr(opts, "burstiness", 1.0)) <= 0:
        raise OptionError("--request-rate must be >= 0 and --burstiness > 0")
    if int(getattr(opts, "max_concurrency", 0) or 0) < 0:
        raise OptionError("--max-concurrency must be >= 0")
    if rate > 0 and opts.shape:
        raise OptionError("--request-rate (open loop) and --shape (user counts) exclude each other")
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
        request_rate=rate,
        max_concurrency=int(getattr(opts, "max_concurrency", 0) or 0),
        burstiness=float(getattr(opts, "burstiness", 1.0)),
        arrival_workers=arrival_workers(opts),
        late_ms=float(getattr(opts, "late_ms", 10.0)),
    )


def arrival_workers(opts: Any) -> int:
    """Processes that share one open-loop schedule: --arrival-workers, else Locust's --processes."""
    n = int(getattr(opts, "arrival_workers", 0) or 0)
    if n > 0:
        return n
    procs = int(getattr(opts, "processes", 0) or 0)
    if procs == -1:
        import os

        procs = os.cpu_count() or 1
    return max(1, procs)


def request_rate_from_argv(argv: Any, environ: dict[str, str] | None = None) -> float:
    """`--request-rate R` from the command line (or LOCUST_REQUEST_RATE), 0.0 when absent.

    Locust picks the user classes when it imports the locustfile, before it parses our options, hence
    this early look (as for --shape).
    """
    import os

    env = os.environ if environ is None else environ
    raw = env.get("LOCUST_REQUEST_RATE", "")
    for i, arg in enumerate(argv):
        if arg == "--request-rate" and i + 1 < len(argv):
            raw = argv[i + 1]
        elif arg.startswith("--request-rate="):
            raw = arg.split("=", 1)[1]
    try:
        return float(raw) if raw else 0.0
    except ValueError:
        raise SystemExit(f"--request-rate must be a number, got {raw!r}") from None
