"""`Gateway`: everything one app owns (pool, shared upstream session, classifier, policy, metrics)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp

from system import speedups
from system.gateway.config import CLASSIFYING_POLICIES, GatewayConfig, PolicyConfig
from system.gateway.metrics import GatewayMetrics
from system.gateway.policies import Classifier, Policy, build_policy
from system.gateway.pool import ExpertPool, check_once, health_loop
from system.gateway.upstream import UpstreamPool

if TYPE_CHECKING:
    from system.gateway.relay import RelayResponse

log = logging.getLogger("expert_router.gateway")

ADMIN_TOKEN_ENV = "EXPERT_ROUTER_ADMIN_TOKEN"
ClassifierLoader = Callable[[Path], Classifier]


def load_prompt_classifier(path: Path) -> Classifier:
    """Default loader: the skops-saved PromptClassifier (imported lazily: sklearn is slow to import)."""
    from system.classifier import PromptClassifier

    return PromptClassifier.load(path)


class Gateway:
    """Per-app state. Created by `create_app`, started and stopped by its lifespan."""

    def __init__(self, cfg: GatewayConfig, classifier_loader: ClassifierLoader | None = None) -> None:
        self.cfg = cfg
        self.limits = cfg.limits
        self.pool = ExpertPool(cfg.experts, cfg.breaker)
        self.metrics = GatewayMetrics(self.pool)
        self.classifier_loader = classifier_loader or load_prompt_classifier
        self.classifier: Classifier | None = None
        self.classifier_path: Path | None = cfg.classifier
        self.policy_cfg: PolicyConfig = cfg.policy
        self.policy: Policy | None = None
        # health checks; requests too when server.upstream_client is aiohttp
        self.session: aiohttp.ClientSession | None = None
        self.upstream: UpstreamPool | None = None  # requests when upstream_client=raw
        self.in_flight = 0
        self.admin_token = os.environ.get(ADMIN_TOKEN_ENV) or None
        self._health_task: asyncio.Task[None] | None = None
        self._watchdog_task: asyncio.Task[None] | None = None
        self.active: set[RelayResponse] = set()  # requests being relayed, for the read-timeout watchdog
        self.loop_time: Callable[[], float] = time.monotonic  # replaced by the running loop's clock
        # the running loop, set by start(): asyncio.get_running_loop() and current_task() without it cost a
        # getpid() system call each on Python 3.11 (several per request)
        self.loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        if self.classifier_path is not None:
            # loading unpickles nothing (skops) but still takes ~100 ms: keep the loop free
            self.classifier = await asyncio.to_thread(self.classifier_loader, self.classifier_path)
        self.policy = build_policy(self.policy_cfg, self.cfg, self.pool, self.classifier)
        lim = self.limits
        connector = aiohttp.TCPConnector(
            limit=lim.upstream_connections,
            limit_per_host=0,
            keepalive_timeout=lim.upstream_keepalive_s,
            ttl_dns_cache=None,  # experts are fixed addresses: resolve once
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            # no sock_read: aiohttp would re-arm a timer on every chunk; `_watchdog` checks silence instead
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=lim.connect_timeout_s),
            auto_decompress=False,  # bytes are relayed unchanged, Content-Encoding included
            # fewer headers to build and send; no Accept-Encoding: compressed streams would only cost CPU
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
            raise_for_status=False,
        )
        if self.cfg.server.upstream_client == "raw":
            self.upstream = UpstreamPool(
                lim.upstream_connections, lim.connect_timeout_s, lim.upstream_keepalive_s
            )
        # which hot paths this process runs: "c" (system/_speedups.c) or "python (why)"
        log.info("hot paths: %s", speedups.MODE)
        # one synchronous round so experts that are down at start are known before the first request
        await check_once(self.session, self.pool, self.cfg.health)
        self._health_task = asyncio.create_task(health_loop(self.session, self.pool, self.cfg.health))
        self.loop = asyncio.get_running_loop()
        self.loop_time = self.loop.time
        self._watchdog_task = asyncio.create_task(self._watchdog())
        # everything allocated so far (modules, classifier, app) lives as long as the process: keep the
        # cyclic GC from re-scanning it on every collection
        gc.collect()
        gc.freeze()

    async def _watchdog(self) -> None:
        """Expire relays whose upstream has been silent for read_timeout_s (before headers or between
        chunks): one sweep per period instead of a timer per chunk."""
        limit = self.limits.read_timeout_s
        period = min(1.0, limit / 4)
        while True:
            await asyncio.sleep(period)
            now = self.loop_time()
            for r in list(self.active):
                last, piped = r.last_io, r.piped
                if piped is not None and piped.last_io > last:
                    last = piped.last_io
                if now - last > limit:
                    r.expire()

    async def stop(self) -> None:
        for t in (self._health_task, self._watchdog_task):
            if t is not None:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
        if self.session is not None:
            await self.session.close()
        if self.upstream is not None:
            self.upstream.close()

    def connection_stats(self) -> dict[str, int]:
        """Upstream pool occupancy (aiohttp keeps no public counter): leak checks and the soak read this."""
        if self.upstream is not None:
            return self.upstream.stats()
        conn = self.session.connector if self.session is not None else None
        acquired = getattr(conn, "_acquired", ())
        idle = getattr(conn, "_conns", {})
        return {"in_use": len(acquired), "idle": sum(len(v) for v in idle.values())}

    async def reload_classifier(self, path: Path | None = None) -> dict[str, object]:
        """Load a classifier (default: the configured one) and rebuild the policy against its k."""
        target = path or self.classifier_path
        if target is None:
            raise ValueError('no classifier path configured; pass {"path": ...}')
        if not Path(target).is_dir():
            raise ValueError(f"classifier directory not found: {target}")
        clf = await asyncio.to_thread(self.classifier_loader, Path(target))
        policy = build_policy(self.policy_cfg, self.cfg, self.pool, clf)  # validates cluster_map vs k first
        self.classifier, self.classifier_path, self.policy = clf, Path(target), policy
        log.warning("classifier reloaded from %s (k=%s)", target, clf.k)
        return {"classifier": str(target), "k": int(clf.k), "policy": policy.kind}

    def set_policy(self, cfg: PolicyConfig) -> dict[str, object]:
        if cfg.kind in CLASSIFYING_POLICIES and self.classifier is None:
            raise ValueError(f"policy {cfg.kind!r} needs a classifier; reload one first")
        self.policy = build_policy(cfg, self.cfg, self.pool, self.classifier)
        self.policy_cfg = cfg
        log.warning("policy switched to %s", cfg.kind)
        return {"policy": cfg.model_dump()}
