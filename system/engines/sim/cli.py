"""`expert-router sim`: serve one simulated model over the OpenAI HTTP API (uvicorn, uvloop, httptools)."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from system.engines.sim.colocate import DEFAULT_SWITCH_S, predict
from system.engines.sim.profilefiles import ProfileFileError, resolve_profile
from system.engines.sim.profiles import PROFILES, Profile, UnknownProfileError

if TYPE_CHECKING:
    from system.edge import EdgeConfig


@click.group(
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
)
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
    "--colocate",
    "colocate",
    multiple=True,
    metavar="NAME=PROFILE@PORT[:MEMFRAC]",
    help="Another engine in this process on the same simulated GPU (repeatable): co-located experts "
    "time-slice one GPU (docs/SIMULATOR.md).",
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
@click.option("--list-profiles", is_flag=True, help="Print the profiles (with provenance) and exit.")
@click.pass_context
def sim(
    ctx: click.Context,
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
    colocate: tuple[str, ...],
    max_connections: int,
    max_in_flight: int | None,
    idle_timeout_s: float,
    header_timeout_s: float,
    body_timeout_s: float,
    max_header_bytes: int,
    list_profiles: bool,
) -> None:
    """Run the continuous-batching vLLM simulator behind the OpenAI API (`sim predict`: offline)."""
    if ctx.invoked_subcommand is not None:
        return
    if list_profiles:
        for p in PROFILES.values():
            click.echo(p.describe())
            click.echo(f"{'':28s} provenance: {p.provenance}")
        return
    if profile_name is None or port is None:
        raise click.UsageError("--profile and --port are required (or use --list-profiles)")
    profile = _load_profile(profile_name).with_overrides(
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

    instances = [(profile, model_name or profile.name, port)]
    for spec in colocate:
        instances.append(_parse_colocate(spec, gpu_memory_utilization))
    for prof, _, _ in instances[1:]:
        problems = prof.problems()
        if problems:
            raise click.ClickException(f"profile {prof.name} cannot be served: {'; '.join(problems)}")
    share = sum(p.gpu_memory_utilization for p, _, _ in instances)
    if len(instances) > 1 and share > 1.0 + 1e-9:
        raise click.BadParameter(
            f"co-located engines take {share:.2f} of the GPU's memory (> 1): give each a :MEMFRAC",
            param_hint="--colocate",
        )
    from system.edge import EdgeConfig

    edge = EdgeConfig(
        max_connections=max_connections,
        max_in_flight=max_in_flight,
        idle_timeout_s=idle_timeout_s,
        header_timeout_s=header_timeout_s,
        body_timeout_s=body_timeout_s,
        max_header_bytes=max_header_bytes,
        fds_per_connection=1,  # no upstream connections
    )
    _serve(instances, host, seed, stream_interval, max_lag_s, log_level, edge)


def _parse_colocate(spec: str, default_frac: float | None) -> tuple[Profile, str, int]:
    """NAME=PROFILE@PORT[:MEMFRAC] -> (profile, served name, port)."""
    try:
        name, rest = spec.split("=", 1)
        prof_name, where = rest.rsplit("@", 1)
        port_s, _, frac_s = where.partition(":")
        port = int(port_s)
        frac = float(frac_s) if frac_s else default_frac
    except ValueError:
        raise click.BadParameter(
            f"{spec!r}: expected NAME=PROFILE@PORT[:MEMFRAC]", param_hint="--colocate"
        ) from None
    if not name or not 1 <= port <= 65535 or (frac is not None and not 0.0 < frac <= 1.0):
        raise click.BadParameter(f"{spec!r}: bad name, port or memory fraction", param_hint="--colocate")
    return _load_profile(prof_name).with_overrides(gpu_memory_utilization=frac), name, port


def _serve(
    instances: list[tuple[Profile, str, int]],
    host: str,
    seed: int,
    stream_interval: int,
    max_lag_s: float,
    log_level: str,
    edge: EdgeConfig,
) -> None:
    """One uvicorn server per engine, all in this process' event loop, sharing one simulated GPU."""
    import asyncio
    import signal

    import uvicorn

    from system.acceptloop import UVICORN_LOOP
    from system.edge import fit_to_fds, raise_nofile_limit, uvicorn_options
    from system.engines.sim.engine import SimEngine
    from system.engines.sim.server import SimApp
    from system.engines.sim.vgpu import VirtualGpu

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    soft, _hard = raise_nofile_limit()  # ~1,000 concurrent streams need ~1,000 sockets
    edge = fit_to_fds(edge, soft)
    gpu = VirtualGpu()
    servers = []
    for i, (prof, name, port) in enumerate(instances):
        # the engine needs the running loop (asyncio.Event, tasks): uvicorn's lifespan starts it there
        engine = SimEngine(
            prof, model_name=name, stream_interval=stream_interval, max_lag_s=max_lag_s, gpu=gpu
        )
        app = SimApp(engine, seed=seed + 7919 * i)
        click.echo(
            f"sim: profile {prof.name} as model {name!r} on http://{host}:{port} "
            f"(KV {prof.num_blocks * prof.block_size:,} tokens, stream interval {stream_interval}"
            f"{f', GPU shared by {len(instances)} engines' if len(instances) > 1 else ''})",
            err=True,
        )
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            loop=UVICORN_LOOP,  # uvloop, accepting connection bursts in batches
            lifespan="on",
            access_log=False,
            log_level=log_level,
            backlog=4096,
            timeout_graceful_shutdown=2,
            server_header=False,
            proxy_headers=False,  # loopback only; skips a middleware hop on every request
            **uvicorn_options(edge),  # httptools protocol with the edge limits
        )
        servers.append(_Server(config) if len(instances) > 1 else uvicorn.Server(config))
    if len(servers) == 1:
        servers[0].run()
        if not servers[0].started:
            sys.exit(1)
        return

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: [setattr(s, "should_exit", True) for s in servers])
        await asyncio.gather(*(s.serve() for s in servers))

    from system import acceptloop

    acceptloop.run(main())
    if not all(s.started for s in servers):
        sys.exit(1)


def _uvicorn_server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """Several servers in one loop: the process installs one signal handler for all of them."""

        @contextlib.contextmanager
        def capture_signals(self):  # type: ignore[no-untyped-def]
            yield

    return Server


def _Server(config: object) -> object:
    return _uvicorn_server_class()(config)


def _load_profile(name: str) -> Profile:
    try:
        return resolve_profile(name)
    except UnknownProfileError as e:
        raise click.BadParameter(str(e.args[0]), param_hint="--profile") from None
    except ProfileFileError as e:
        raise click.BadParameter(str(e), param_hint="--profile") from None


@sim.command("predict", context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--profile", "profile_name", required=True, help="Profile name or profile JSON file.")
@click.option("--colocated", type=click.IntRange(1, 64), default=1, help="Engine instances on one GPU.")
@click.option("--concurrency", type=click.IntRange(min=1), required=True, help="Requests in flight, total.")
@click.option("--requests", "n_requests", type=click.IntRange(min=1), required=True, help="Requests sent.")
@click.option(
    "--input-lengths",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="JSON list of prompt lengths in tokens, used in order (or an object keyed by --requests).",
)
@click.option("--output-tokens", type=click.IntRange(min=1), required=True, help="Tokens per request.")
@click.option(
    "--memory-fraction",
    type=click.FloatRange(0.01, 1.0),
    default=None,
    help="GPU memory share of each instance (transformers' --cb-max-memory-percent). "
    "Default: the profile's, divided by --colocated.",
)
@click.option(
    "--switch-us", type=click.FloatRange(min=0.0), default=DEFAULT_SWITCH_S * 1e6,
    help="GPU context-switch cost between instances (microseconds).",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def predict_cmd(
    profile_name: str,
    colocated: int,
    concurrency: int,
    n_requests: int,
    input_lengths: Path,
    output_tokens: int,
    memory_fraction: float | None,
    switch_us: float,
    as_json: bool,
) -> None:
    """Predict a closed-loop run of K instances sharing one GPU (offline, deterministic)."""
    prof = _load_profile(profile_name)
    frac = memory_fraction if memory_fraction is not None else prof.gpu_memory_utilization / colocated
    if frac * colocated > 1.0 + 1e-9:
        raise click.BadParameter(
            f"{colocated} instances x {frac} of the GPU's memory exceeds the GPU",
            param_hint="--memory-fraction",
        )
    prof = prof.with_overrides(gpu_memory_utilization=frac)
    try:
        data = json.loads(input_lengths.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise click.BadParameter(f"cannot read {input_lengths}: {e}", param_hint="--input-lengths") from None
    if isinstance(data, dict):  # the reference file: {n: [lengths]}
        data = data.get(str(n_requests))
    if not isinstance(data, list) or not all(isinstance(x, int) and x >= 1 for x in data):
        raise click.BadParameter("expected a JSON list of positive integers", param_hint="--input-lengths")
    if len(data) < n_requests:
        raise click.BadParameter(
            f"{len(data)} lengths for {n_requests} requests", param_hint="--input-lengths"
        )
    try:
        pred = predict([prof] * colocated, concurrency=concurrency, input_lengths=data[:n_requests],
                       output_tokens=output_tokens, switch_s=switch_us * 1e-6)  # fmt: skip
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    out = {
        "profile": prof.name,
        "colocated": colocated,
        "memory_fraction": frac,
        "concurrency": concurrency,
        "requests": n_requests,
        "output_tokens": output_tokens,
        **{k: round(v, 4) for k, v in pred.as_dict().items() if k != "requests"},
    }
    if as_json:
        click.echo(json.dumps(out))
    else:
        for k, v in out.items():
            click.echo(f"{k:16s} {v}")
