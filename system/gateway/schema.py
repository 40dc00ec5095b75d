"""OpenAPI description of the gateway's public API: request and response schemas (documentation only: the
hot path parses bodies itself and relays upstream bytes unchanged)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from system.gateway.config import PolicyConfig


class Open(BaseModel):
    """OpenAI objects carry more fields than listed; extra ones are accepted and relayed."""

    model_config = ConfigDict(extra="allow")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int | str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ContentPart(Open):
    type: str
    text: str | None = None


class ChatMessage(Open):
    role: Literal["system", "user", "assistant", "tool", "developer", "function"]
    content: str | list[ContentPart] | None = None


class StreamOptions(Open):
    include_usage: bool | None = None


class _Sampling(Open):
    model: str = Field(description="'auto' to route, an expert's name, or an expert's served model name.")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    n: int | None = Field(default=None, ge=1, le=1)
    stop: str | list[str] | None = None
    ignore_eos: bool | None = Field(default=None, description="vLLM extension.")
    min_tokens: int | None = Field(default=None, ge=0, description="vLLM extension.")


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] = Field(description="Text, a list of one text, or token ids.")


class Usage(Open):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int | None = None


class ChatChoice(Open):
    index: int
    message: dict[str, Any]
    finish_reason: str | None = None


class ChatCompletion(Open):
    id: str
    object: str
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None


class CompletionChoice(Open):
    index: int
    text: str
    finish_reason: str | None = None


class Completion(Open):
    id: str
    object: str
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(Open):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Health(Open):
    status: Literal["ok", "degraded"]
    policy: str | None
    in_flight: int
    upstream_connections: dict[str, int]
    experts: dict[str, dict[str, Any]]


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str | None = Field(default=None, description="Classifier directory (default: the configured one).")


class ReloadResponse(BaseModel):
    classifier: str
    k: int
    policy: str


class PolicyResponse(BaseModel):
    policy: dict[str, Any]


class PolicyRequest(BaseModel):
    """Wrapper so that the discriminated union of policies gets a name in the schema."""

    policy: PolicyConfig


SCHEMAS: list[type[BaseModel]] = [
    ErrorResponse,
    ChatCompletionRequest,
    CompletionRequest,
    ChatCompletion,
    Completion,
    ModelList,
    Health,
    ReloadRequest,
    ReloadResponse,
    PolicyResponse,
    PolicyRequest,
]
REF = "#/components/schemas/{model}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    what = {
        400: "Invalid request (OpenAI error shape)",
        401: "Missing or wrong admin token",
        403: "Admin API disabled",
        404: "Unknown model",
        408: "Request head or body too slow",
        413: "Body too large",
        415: "Body is not JSON",
        431: "Request headers too large",
        502: "The expert failed after receiving the request",
        503: "Overloaded (Retry-After) or no expert available",
        504: "The expert went silent",
    }
    return {str(s): _json(_ref("ErrorResponse"), what[s]) for s in statuses}


def _completion_op(request: str, response: str, summary: str) -> dict[str, Any]:
    ok = _json(_ref(response), "The expert's answer, relayed unchanged")
    ok["content"]["text/event-stream"] = {
        "schema": {"type": "string", "description": "SSE events `data: {json}` ending with `data: [DONE]`"}
    }
    ok["headers"] = {
        h: {"schema": {"type": "string"}}
        for h in ("x-router-expert", "x-router-cluster", "x-router-policy", "x-router-overhead-ms")
    }
    return {
        "summary": summary,
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(request)}}},
        "responses": {"200": ok, **_errors(400, 404, 408, 413, 415, 431, 502, 503, 504)},
    }


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document: FastAPI's paths, with the bodies the handlers parse themselves."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
    _, defs = models_json_schema([(m, "validation") for m in SCHEMAS], ref_template=REF)
    doc.setdefault("components", {}).setdefault("schemas", {}).update(defs.get("$defs", {}))
    paths = doc.setdefault("paths", {})
    paths["/v1/chat/completions"] = {
        "post": _completion_op("ChatCompletionRequest", "ChatCompletion", "Chat completion (routed)")
    }
    paths["/v1/completions"] = {
        "post": _completion_op("CompletionRequest", "Completion", "Text completion (routed)")
    }
    paths["/v1/models"] = {
        "get": {"summary": "auto and every expert", "responses": {"200": _json(_ref("ModelList"), "Models")}}
    }
    paths["/health"] = {
        "get": {"summary": "Gateway and expert state", "responses": {"200": _json(_ref("Health"), "Health")}}
    }
    paths["/metrics"] = {
        "get": {
            "summary": "Prometheus metrics",
            "responses": {
                "200": {
                    "description": "Prometheus text",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    }
    auth = [{"adminToken": []}]
    doc["components"]["securitySchemes"] = {"adminToken": {"type": "http", "scheme": "bearer"}}
    paths["/admin/reload-classifier"] = {
        "post": {
            "summary": "Reload the classifier",
            "security": auth,
            "requestBody": {
                "required": False,
                "content": {"application/json": {"schema": _ref("ReloadRequest")}},
            },
            "responses": {
                "200": _json(_ref("ReloadResponse"), "Reloaded"),
                **_errors(400, 401, 403, 413, 415),
            },
        }
    }
    policy = doc["components"]["schemas"]["PolicyRequest"]["properties"]["policy"]
    paths["/admin/policy"] = {
        "post": {
            "summary": "Switch the routing policy",
            "security": auth,
            "requestBody": {"required": True, "content": {"application/json": {"schema": policy}}},
            "responses": {
                "200": _json(_ref("PolicyResponse"), "Switched"),
                **_errors(400, 401, 403, 413, 415),
            },
        }
    }
    app.openapi_schema = doc
    return doc
