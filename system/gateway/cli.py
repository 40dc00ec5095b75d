"""`expert-router gateway --config FILE [--host H] [--port P]`: serve the gateway with uvicorn."""

from __future__ import annotations

import gc
import logging
import sys

import click

from system.config import ConfigError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="Gateway YAML.")
@click.option("--host", default=None, help="Bind address (default: the config's host, 127.0.0.1).")
@click.option("--port", default=None, type=int, help="Port (default: the config's port).")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
def gateway(config_path: str, host: str | None, port: int | None, log_level: str) -> None:
    """Run the routing gateway (OpenAI API) in front of the experts named in --config."""
    from system.gateway.config import load_config

    try:
        cfg = load_config(config_path)
        if host is not None or port is not None:
            cfg = cfg.model_copy(
                update={"host": host or cfg.host, "port": cfg.port if port is None else port}
            )
    except ConfigError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)

    import uvicorn

    from system.gateway.app import create_app

    # The relay allocates short-lived objects by the million (requests, responses, futures); profiling at
    # 500 streams showed ~19 % of the gateway's CPU in the cyclic GC with default thresholds. Collect the
    # young generation 70x less often; long-lived startup objects are frozen out of collections in
    # Gateway.start(). Reference counting still frees almost everything immediately.
    gc.set_threshold(50_000, 20, 100)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(
        create_app(cfg),
        host=cfg.host,
        port=cfg.port,
        loop="uvloop",
        http="httptools",
        access_log=False,  # one log line per request costs more than the relay itself
        log_level=log_level,
        backlog=4096,
        timeout_keep_alive=30,
        lifespan="on",
        proxy_headers=False,  # no proxy in front of us on loopback: skip X-Forwarded-* parsing per request
    )
