"""Expert state (outstanding requests, health, breaker) and the active health-check loop."""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from system.gateway.breaker import CircuitBreaker
from system.gateway.config import BreakerConfig, ExpertConfig, HealthConfig

log = logging.getLogger("expert_router.gateway")


class ExpertState:
    """One upstream: its URLs, load (outstanding requests) and availability."""

    __slots__ = (
        "breaker",
        "health_failures",
        "healthy",
        "model",
        "name",
        "outstanding",
        "url",
        "urls",
    )

    def __init__(self, cfg: ExpertConfig, breaker: BreakerConfig) -> None:
        self.name = cfg.name
        self.url = cfg.url
        # served model name: from the config, else discovered from the expert's /v1/models
        self.model = cfg.model
        # precomputed so the hot path does no string work
        self.urls = {p: cfg.url + p for p in ("/v1/chat/completions", "/v1/completions")}
        self.outstanding = 0
        self.healthy = True
        self.health_failures = 0
        self.breaker = CircuitBreaker(breaker.failure_threshold, breaker.open_s)

    def available(self) -> bool:
        return self.healthy and self.breaker.available()

    def snapshot(self) -> dict[str, object]:
        return {
            "url": self.url,
            "model": self.model,
            "healthy": self.healthy,
            "breaker": self.breaker.state.value,
            "outstanding": self.outstanding,
        }


class ExpertPool:
    """All experts, by name and in config order."""

    def __init__(self, experts: list[ExpertConfig], breaker: BreakerConfig) -> None:
        self.experts = [ExpertState(e, breaker) for e in experts]
        self.by_name = {e.name: e for e in self.experts}

    def lookup(self, model: str) -> ExpertState | None:
        """The expert a `model` names: its routing name, else its served model name."""
        e = self.by_name.get(model)
        if e is None:
            e = next((x for x in self.experts if x.model == model), None)
        return e

    def available(self) -> list[ExpertState]:
        return [e for e in self.experts if e.available()]


async def check_once(session: aiohttp.ClientSession, pool: ExpertPool, cfg: HealthConfig) -> None:
    """Probe every expert's health endpoint concurrently and update its state."""
    timeout = aiohttp.ClientTimeout(total=cfg.timeout_s)

    async def probe(e: ExpertState) -> None:
        ok = False
        try:
            async with session.get(e.url + cfg.path, timeout=timeout) as r:
                await r.read()
                ok = r.status == 200
        except (TimeoutError, aiohttp.ClientError, OSError):
            ok = False
        if ok and e.model is None:
            e.model = await discover_model(session, e, timeout)
        if ok:
            if not e.healthy:
                log.warning("expert %s is healthy again", e.name)
            e.healthy = True
            e.health_failures = 0
            e.breaker.health_ok()
        else:
            e.health_failures += 1
            if e.healthy and e.health_failures >= cfg.unhealthy_after:
                log.warning(
                    "expert %s failed %d health check(s): marked unhealthy", e.name, e.health_failures
                )
                e.healthy = False

    await asyncio.gather(*(probe(e) for e in pool.experts))


async def discover_model(
    session: aiohttp.ClientSession, e: ExpertState, timeout: aiohttp.ClientTimeout
) -> str | None:
    """The first model id the expert serves (engines like vLLM reject any other `model`)."""
    try:
        async with session.get(e.url + "/v1/models", timeout=timeout) as r:
            if r.status != 200:
                return None
            data = await r.json(content_type=None)
        model = data["data"][0]["id"]
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    if isinstance(model, str):
        log.info("expert %s serves model %r", e.name, model)
        return model
    return None


async def health_loop(session: aiohttp.ClientSession, pool: ExpertPool, cfg: HealthConfig) -> None:
    """Run `check_once` every `interval_s` until cancelled (one task per gateway)."""
    while True:
        await asyncio.sleep(cfg.interval_s)
        try:
            await check_once(session, pool, cfg)
        except Exception:  # a bug in one round must not stop health checking
            log.exception("health check round failed")
