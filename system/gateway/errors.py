"""OpenAI-shaped error bodies and responses; every error the gateway returns goes through here."""

from __future__ import annotations

import json

from starlette.responses import Response

# HTTP status -> OpenAI error `type`
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    431: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


def error_body(
    status: int, message: str, *, param: str | None = None, code: int | str | None = None
) -> bytes:
    err = {
        "message": message,
        "type": ERROR_TYPES.get(status, "error"),
        "param": param,
        "code": status if code is None else code,
    }
    return json.dumps({"error": err}).encode()


def error_response(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: int | str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    return Response(
        error_body(status, message, param=param, code=code),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def sse_error_event(status: int, message: str) -> bytes:
    """An error as one SSE event, sent when a stream breaks after its headers went out
    (the `openai` client raises APIError on an event carrying `error`)."""
    return b"data: " + error_body(status, message) + b"\n\n"
