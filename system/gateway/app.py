"""FastAPI app factory `create_app(settings)`: lifespan-owned resources, handlers get them via Depends."""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import TypeAdapter, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from system.config import StrictModel
from system.gateway.config import GatewayConfig, PolicyConfig
from system.gateway.errors import error_response
from system.gateway.relay import handle_completion
from system.gateway.request import (
    CHAT,
    COMPLETIONS,
    BadRequest,
    check_content_type,
    read_body_asgi,
    request_head,
)
from system.gateway.schema import build_openapi
from system.gateway.state import ADMIN_TOKEN_ENV, ClassifierLoader, Gateway
from system.jsonbody import JsonBodyError, loads

log = logging.getLogger("expert_router.gateway")


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


ADMIN_BODY_BYTES = 64 * 1024
_POLICY = TypeAdapter(PolicyConfig)


async def admin_body(request: Request, gw: Gateway, *, required: bool) -> object:
    """An admin call's JSON body, read only after require_admin passed (401/403 come before any 400)."""
    head = request_head(request.scope["headers"], frozenset())
    check_content_type(head.content_type)
    raw = await read_body_asgi(request.receive, ADMIN_BODY_BYTES, head.content_length)
    if not raw.strip():
        if required:
            raise BadRequest(400, "request body is empty; expected a JSON object")
        return None
    lim = gw.limits
    try:
        return loads(raw, max_depth=lim.max_json_depth, max_digits=lim.max_number_digits)
    except JsonBodyError as e:
        raise BadRequest(400, e.message) from None


def _invalid(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in x['loc']) or 'body'}: {x['msg']}" for x in e.errors())


HOT_PATHS = frozenset({CHAT, COMPLETIONS})


class GatewayApp(FastAPI):
    """FastAPI, plus a direct lane for the two completion endpoints.

    Profiling at a few hundred concurrent streams showed a large share of the gateway's CPU in Starlette's
    middleware stack (routing, exception middlewares wrapping every `send` of every chunk, dependency
    solving). The completion endpoints do their own error handling, so they skip that stack: same handler,
    same Gateway object, one function call instead of ~15 per request and ~3 per chunk. Every other route
    (models, health, metrics, admin) goes through FastAPI as usual.
    """

    fast_path = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.fast_path
            and scope["type"] == "http"
            and scope["path"] in HOT_PATHS
            and scope["method"] == "POST"
        ):
            gw: Gateway = self.state.gateway
            try:
                response = await handle_completion(gw, scope, receive, scope["path"])
            except Exception as e:  # never let a bug kill the connection without an answer
                log.exception("unexpected error before relaying")
                response = error_response(500, f"gateway error: {e!r}")
            await response(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(
    settings: GatewayConfig, *, classifier_loader: ClassifierLoader | None = None, fast_path: bool = True
) -> FastAPI:
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

    app = GatewayApp(
        title="expert-router gateway",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.openapi = lambda: build_openapi(app)  # type: ignore[method-assign]
    app.fast_path = fast_path and os.environ.get("EXPERT_ROUTER_GATEWAY_FASTPATH", "1") != "0"

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
        return await handle_completion(gw, request.scope, request.receive, CHAT)

    @app.post("/v1/completions")
    async def completions(request: Request, gw: GatewayDep) -> Response:
        return await handle_completion(gw, request.scope, request.receive, COMPLETIONS)

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

    # Admin bodies are parsed in the handlers, not declared as FastAPI body parameters: FastAPI reads and
    # validates declared bodies before it runs dependencies, which would answer 400 before 401.
    @app.post("/admin/reload-classifier", dependencies=[Depends(require_admin)])
    async def reload_classifier(request: Request, gw: GatewayDep) -> Response:
        try:
            data = await admin_body(request, gw, required=False)
            req = ReloadRequest.model_validate(data if data is not None else {})
        except BadRequest as e:
            return error_response(e.status, e.message)
        except ValidationError as e:
            return error_response(400, f"invalid request: {_invalid(e)}")
        try:
            return JSONResponse(await gw.reload_classifier(req.path))
        except Exception as e:  # a bad classifier must not take the gateway down: keep the old one
            return error_response(400, f"classifier not reloaded: {e}")

    @app.post("/admin/policy", dependencies=[Depends(require_admin)])
    async def set_policy(request: Request, gw: GatewayDep) -> Response:
        try:
            policy = _POLICY.validate_python(await admin_body(request, gw, required=True))
        except BadRequest as e:
            return error_response(e.status, e.message)
        except ValidationError as e:
            return error_response(400, f"invalid request: {_invalid(e)}")
        try:
            return JSONResponse(gw.set_policy(policy))
        except Exception as e:
            return error_response(400, f"policy not changed: {e}")

    return app
