"""`expert-router sim`: serve one simulated model over the OpenAI HTTP API (uvicorn, uvloop, httptools)."""

from __future__ import annotations

import logging
import sys

import click

from system.engines.sim.profilefiles import ProfileFileError, resolve_profile
from system.engines.sim.profiles import PROFILES, UnknownProfileError


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option(
    "--profile",
    "profile_name",
    default=None,
    help="Profile name (see --list-profiles) or a profile JSON file (e.g. from `expert-router calibrate`).",
)
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="TCP port to listen on.")
@click.option("--host", default="127.0.0.1", help="Interface to bind.")
@click.option("--seed", type=int, default=0, help="Seed of the natural output-length draw.")
@click.option(
    "--stream-interval", type=click.IntRange(min=1), default=1, help="Tokens per SSE event (vLLM's option)."
)
@click.option("--model-name", default=None, help="Served model name (default: the profile name).")
@click.option("--max-num-seqs", type=click.IntRange(min=1), default=None, help="Override the profile.")
@click.option(
    "--max-num-batched-tokens", type=click.IntRange(min=1), default=None, help="Override the profile."
)
@click.option("--max-model-len", type=click.IntRange(min=2), default=None, help="Override the profile.")
@click.option(
    "--gpu-memory-utilization", type=click.FloatRange(0.05, 1.0), default=None, help="Override the profile."
)
@click.option(
    "--num-gpu-blocks-override", type=click.IntRange(min=1), default=None, help="KV blocks (vLLM's option)."
)
@click.option(
    "--output-len-median", type=click.FloatRange(min=1.0), default=None, help="Override the profile."
)
@click.option(
    "--max-lag", "max_lag_s", type=click.FloatRange(min=0.0), default=0.02,
    help="Re-anchor the step loop to the wall clock when it wakes this late (seconds).",
)  # fmt: skip
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="warning",
    help="Log level.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=8192,
    help="Client connections at once; more get 503 + Retry-After (not /health, /metrics).",
)
@click.option(
    "--max-in-flight",
    type=click.IntRange(min=1),
    default=None,
    help="Requests being served at once; more get 503 + Retry-After (default: no cap, requests queue).",
)
@click.option(
    "--idle-timeout",
    "idle_timeout_s",
    type=click.FloatRange(min=0.01),
    default=30.0,
    help="Close connections idle this long (s).",
)
@click.option(
    "--header-timeout",
    "header_timeout_s",
    type=click.FloatRange(min=0.01),
    default=10.0,
    help="Request head within this (s), else 408.",
)
@click.option(
    "--body-timeout",
    "body_timeout_s",
    type=click.FloatRange(min=0.01),
    default=30.0,
    help="Request body within this after the head (s), else 408.",
)
@click.option(
    "--max-header-bytes", type=click.IntRange(min=1024), default=32 * 1024, help="Larger request heads: 431."
)
@click.option("--list-profiles", is_flag=True, help="Print the profiles and exit.")
def sim(
    profile_name: str | None,
    port: int | None,
    host: str,
    seed: int,
    stream_interval: int,
    model_name: str | None,
    max_num_seqs: int | None,
    max_num_batched_tokens: int | None,
    max_model_len: int | None,
    gpu_memory_utilization: float | None,
    num_gpu_blocks_override: int | None,
    output_len_median: float | None,
    max_lag_s: float,
    log_level: str,
    max_connections: int,
    max_in_flight: int | None,
    idle_timeout_s: float,
    header_timeout_s: float,
    body_timeout_s: float,
    max_header_bytes: int,
    list_profiles: bool,
) -> None:
    """Run the continuous-batching vLLM simulator behind the OpenAI API."""
    if list_profiles:
        for p in PROFILES.values():
            click.echo(p.describe())
        return
    if profile_name is None or port is None:
        raise click.UsageError("--profile and --port are required (or use --list-profiles)")
    try:
        profile = resolve_profile(profile_name)
    except UnknownProfileError as e:
        raise click.BadParameter(str(e.args[0]), param_hint="--profile") from None
    except ProfileFileError as e:
        raise click.BadParameter(str(e), param_hint="--profile") from None
    profile = profile.with_overrides(
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        max_model_len=max_model_len,
        gpu_memory_utilization=gpu_memory_utilization,
        output_len_median=output_len_median,
        num_gpu_blocks_override=num_gpu_blocks_override,
    )
    problems = profile.problems()
    if problems:
        raise click.ClickException(f"profile {profile.name} cannot be served: {'; '.join(problems)}")

    import uvicorn

    from system.edge import EdgeConfig, fit_to_fds, raise_nofile_limit, uvicorn_options
    from system.engines.sim.engine import SimEngine
    from system.engines.sim.server import SimApp

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    soft, _hard = raise_nofile_limit()  # ~1,000 concurrent streams need ~1,000 sockets
    edge = EdgeConfig(
        max_connections=max_connections,
        max_in_flight=max_in_flight,
        idle_timeout_s=idle_timeout_s,
        header_timeout_s=header_timeout_s,
        body_timeout_s=body_timeout_s,
        max_header_bytes=max_header_bytes,
        fds_per_connection=1,  # no upstream connections
    )
    name = model_name or profile.name

    # the engine needs the running loop (asyncio.Event, tasks): build it in uvicorn's loop via lifespan
    engine = SimEngine(profile, model_name=name, stream_interval=stream_interval, max_lag_s=max_lag_s)
    app = SimApp(engine, seed=seed)
    click.echo(
        f"sim: profile {profile.name} as model {name!r} on http://{host}:{port} "
        f"(KV {profile.num_blocks * profile.block_size:,} tokens, stream interval {stream_interval})",
        err=True,
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        lifespan="on",
        access_log=False,
        log_level=log_level,
        backlog=4096,
        timeout_graceful_shutdown=2,
        server_header=False,
        proxy_headers=False,  # loopback only; skips a middleware hop on every request
        **uvicorn_options(fit_to_fds(edge, soft)),  # httptools protocol with the edge limits
    )
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        sys.exit(1)
