"""FastAPI app factory `create_app(settings)`: lifespan-owned resources, handlers get them via Depends."""

from __future__ import annotations

import hmac
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from system.config import StrictModel
from system.gateway.config import GatewayConfig, PolicyConfig
from system.gateway.errors import error_response
from system.gateway.relay import CHAT, handle_completion
from system.gateway.state import ADMIN_TOKEN_ENV, ClassifierLoader, Gateway


async def get_gateway(request: Request) -> Gateway:
    return request.app.state.gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


async def require_admin(gw: GatewayDep, authorization: Annotated[str | None, Header()] = None) -> None:
    """Admin calls need `Authorization: Bearer $EXPERT_ROUTER_ADMIN_TOKEN`; unset variable: admin is off."""
    if gw.admin_token is None:
        raise HTTPException(403, f"admin API disabled: start the gateway with {ADMIN_TOKEN_ENV} set")
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), gw.admin_token.encode()):
        raise HTTPException(401, "missing or wrong admin bearer token")


class ReloadRequest(StrictModel):
    path: Path | None = None


def create_app(settings: GatewayConfig, *, classifier_loader: ClassifierLoader | None = None) -> FastAPI:
    """Build the gateway app; nothing is started until the ASGI lifespan runs."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gw = Gateway(settings, classifier_loader)
        await gw.start()
        app.state.gateway = gw
        try:
            yield
        finally:
            await gw.stop()

    app = FastAPI(
        title="expert-router gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in exc.errors()
        )
        return error_response(400, f"invalid request: {problems}")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request, gw: GatewayDep) -> Response:
        return await handle_completion(gw, request, CHAT)

    @app.post("/v1/completions")
    async def completions(request: Request, gw: GatewayDep) -> Response:
        return await handle_completion(gw, request, "/v1/completions")

    @app.get("/v1/models")
    async def models(gw: GatewayDep) -> JSONResponse:
        created = int(time.time())
        data = [{"id": "auto", "object": "model", "created": created, "owned_by": "expert-router"}]
        data += [
            {
                "id": e.name,
                "object": "model",
                "created": created,
                "owned_by": "expert-router",
                "root": e.model or e.name,
            }
            for e in gw.pool.experts
        ]
        return JSONResponse({"object": "list", "data": data})

    @app.get("/health")
    async def health(gw: GatewayDep) -> JSONResponse:
        # 200 while the gateway itself serves; expert availability is reported, not fatal
        experts = {e.name: e.snapshot() for e in gw.pool.experts}
        status = "ok" if any(e.available() for e in gw.pool.experts) else "degraded"
        policy = gw.policy.kind if gw.policy else None
        return JSONResponse(
            {
                "status": status,
                "policy": policy,
                "in_flight": gw.in_flight,
                "upstream_connections": gw.connection_stats(),
                "experts": experts,
            }
        )

    @app.get("/metrics")
    async def metrics(gw: GatewayDep) -> Response:
        return Response(generate_latest(gw.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/reload-classifier", dependencies=[Depends(require_admin)])
    async def reload_classifier(gw: GatewayDep, req: ReloadRequest | None = None) -> JSONResponse:
        try:
            return JSONResponse(await gw.reload_classifier(req.path if req else None))
        except Exception as e:  # a bad classifier must not take the gateway down: keep the old one
            return error_response(400, f"classifier not reloaded: {e}")

    @app.post("/admin/policy", dependencies=[Depends(require_admin)])
    async def set_policy(gw: GatewayDep, policy: PolicyConfig) -> JSONResponse:
        try:
            return JSONResponse(gw.set_policy(policy))
        except Exception as e:
            return error_response(400, f"policy not changed: {e}")

    return app
