"""`expert-router gateway --config FILE [--port P] [--workers N]`: serve the gateway with uvicorn."""

from __future__ import annotations

import gc
import logging
import os
import sys

import click

from system.config import ConfigError

# Set by the parent for `--workers N`: each worker process rebuilds the app from this (validated) JSON.
CONFIG_ENV = "EXPERT_ROUTER_GATEWAY_CONFIG_JSON"


def _tune_process() -> None:
    # The relay allocates short-lived objects by the million (requests, responses, futures); profiling at
    # 500 streams showed ~19 % of the gateway's CPU in the cyclic GC with default thresholds. Collect the
    # young generation 70x less often; long-lived startup objects are frozen out of collections in
    # Gateway.start(). Reference counting still frees almost everything immediately.
    gc.set_threshold(50_000, 20, 100)


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
def gateway(
    config_path: str,
    host: str | None,
    port: int | None,
    log_level: str,
    workers: int | None,
    upstream_client: str | None,
    loop_kind: str | None,
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

    from system.gateway.app import create_app

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    opts = {
        "host": cfg.host,
        "port": cfg.port,
        "loop": cfg.server.loop,
        "http": "httptools",  # the relay's stream fast lane writes to this protocol's transport
        "access_log": False,  # one log line per request costs more than the relay itself
        "log_level": log_level,
        "backlog": 4096,
        "timeout_keep_alive": 30,
        "lifespan": "on",
        "proxy_headers": False,  # no proxy in front of us on loopback: skip X-Forwarded-* parsing per request
    }
    if cfg.server.workers > 1:
        # uvicorn binds once and its worker processes accept on the shared socket; each builds its own app
        os.environ[CONFIG_ENV] = cfg.model_dump_json()
        uvicorn.run("system.gateway.cli:app_from_env", factory=True, workers=cfg.server.workers, **opts)  # type: ignore[arg-type]
        return
    _tune_process()
    uvicorn.run(create_app(cfg), **opts)  # type: ignore[arg-type]
