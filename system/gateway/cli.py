"""`expert-router gateway --config FILE [--port P] [--workers N]`: serve the gateway with uvicorn."""

from __future__ import annotations

import gc
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from system.config import ConfigError

if TYPE_CHECKING:
    from system.gateway.config import GatewayConfig


def edge_options(cfg: GatewayConfig, fd_soft_limit: int) -> dict[str, Any]:
    """uvicorn.Config keywords for the gateway's edge limits (`limits:` in the YAML)."""
    from system.edge import EdgeConfig, fit_to_fds, uvicorn_options

    lim = cfg.limits
    edge = EdgeConfig(
        max_connections=lim.max_connections,
        idle_timeout_s=lim.idle_timeout_s,
        header_timeout_s=lim.header_timeout_s,
        body_timeout_s=lim.body_timeout_s,
        max_header_bytes=lim.max_header_bytes,
        max_headers=lim.max_headers,
        retry_after_s=lim.retry_after_s,
    )
    return uvicorn_options(fit_to_fds(edge, fd_soft_limit))


# Set by the parent for `--workers N`: each worker process rebuilds the app from this (validated) JSON.
CONFIG_ENV = "EXPERT_ROUTER_GATEWAY_CONFIG_JSON"


def _tune_process() -> None:
    # The relay allocates short-lived objects by the million (requests, responses, futures); profiling at
    # 500 streams showed ~19 % of the gateway's CPU in the cyclic GC with default thresholds. Collect the
    # young generation 70x less often; long-lived startup objects are frozen out of collections in
    # Gateway.start(). Reference counting still frees almost everything immediately.
    gc.set_threshold(50_000, 20, 100)


def __getattr__(name: str) -> Any:
    """`WorkerEdgeProtocol`: the edge protocol class of a worker process (`--workers N`), built from the
    config in CONFIG_ENV. uvicorn pickles its Config to spawn workers, and a class bound at run time cannot be
    pickled, so workers get it by this import path instead (its limits apply per worker)."""
    if name == "WorkerEdgeProtocol":
        import resource

        from system.gateway.config import GatewayConfig

        cfg = GatewayConfig.model_validate_json(os.environ[CONFIG_ENV])
        return edge_options(cfg, resource.getrlimit(resource.RLIMIT_NOFILE)[0])["http"]
    raise AttributeError(name)


def app_from_env() -> object:
    """uvicorn factory of each worker process (`--workers N`): its own Gateway, classifier and state."""
    from system.gateway.app import create_app
    from system.gateway.config import GatewayConfig

    _tune_process()
    return create_app(GatewayConfig.model_validate_json(os.environ[CONFIG_ENV]))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="Gateway YAML.")
@click.option("--host", default=None, help="Bind address (default: the config's host, 127.0.0.1).")
@click.option("--port", default=None, type=int, help="Port (default: the config's port).")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--workers", default=None, type=int, help="Processes on the port (default: server.workers).")
@click.option(
    "--upstream-client",
    default=None,
    type=click.Choice(["raw", "aiohttp"]),
    help="Upstream HTTP client (default: server.upstream_client).",
)
@click.option("--loop", "loop_kind", default=None, type=click.Choice(["uvloop", "asyncio"]))
@click.option(
    "--accept",
    default=None,
    type=click.Choice(["batch", "single"]),
    help="uvloop: accept waiting connections in batches, or one per loop iteration (default: server.accept).",
)
def gateway(
    config_path: str,
    host: str | None,
    port: int | None,
    log_level: str,
    workers: int | None,
    upstream_client: str | None,
    loop_kind: str | None,
    accept: str | None,
) -> None:
    """Run the routing gateway (OpenAI API) in front of the experts named in --config."""
    from system.gateway.config import load_config

    try:
        cfg = load_config(config_path)
        if host is not None or port is not None:
            cfg = cfg.model_copy(
                update={"host": host or cfg.host, "port": cfg.port if port is None else port}
            )
        server = {
            k: v
            for k, v in (
                ("workers", workers),
                ("upstream_client", upstream_client),
                ("loop", loop_kind),
                ("accept", accept),
            )
            if v is not None
        }
        if server:
            cfg = cfg.model_validate(
                {**cfg.model_dump(mode="json"), "server": {**cfg.server.model_dump(), **server}}
            )
    except (ConfigError, ValueError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)

    import uvicorn

    from system.acceptloop import UVICORN_LOOP
    from system.edge import raise_nofile_limit
    from system.gateway.app import create_app
    from system.gateway.state import load_prompt_classifier

    # A classifier that is missing, tampered with or does not fit the cluster map is one line and exit 2,
    # before uvicorn starts (a failure inside the lifespan would print uvicorn's traceback).
    preloaded = None
    if cfg.classifier is not None:
        try:
            preloaded = load_prompt_classifier(cfg.classifier)
            cfg.expert_for_cluster(int(preloaded.k))
        except Exception as e:
            click.echo(f"error: classifier {cfg.classifier} not usable: {e}", err=True)
            sys.exit(2)

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    soft, _hard = raise_nofile_limit()
    opts = {
        "host": cfg.host,
        "port": cfg.port,
        "loop": UVICORN_LOOP
        if cfg.server.loop == "uvloop" and cfg.server.accept == "batch"
        else cfg.server.loop,
        "access_log": False,  # one log line per request costs more than the relay itself
        "log_level": log_level,
        "backlog": 4096,
        "lifespan": "on",
        "proxy_headers": False,  # no proxy in front of us on loopback: skip X-Forwarded-* parsing per request
        # the http protocol with the edge limits: uvicorn's httptools protocol underneath, whose transport
        # the relay's stream fast lane writes to
        **edge_options(cfg, soft),
    }
    if cfg.server.workers > 1:
        # uvicorn binds once and its worker processes accept on the shared socket; each builds its own app
        # (and loads the classifier checked above again)
        os.environ[CONFIG_ENV] = cfg.model_dump_json()
        opts["http"] = "system.gateway.cli:WorkerEdgeProtocol"
        uvicorn.run(
            "system.gateway.cli:app_from_env",
            factory=True,
            workers=cfg.server.workers,
            **opts,  # type: ignore[arg-type]
        )
        return
    unused = [preloaded] if preloaded is not None else []

    def loader(path: Path) -> Any:  # the lifespan's load at start-up is the one done above
        if unused and path == cfg.classifier:
            return unused.pop()
        return load_prompt_classifier(path)

    _tune_process()
    uvicorn.run(create_app(cfg, classifier_loader=loader), **opts)  # type: ignore[arg-type]
