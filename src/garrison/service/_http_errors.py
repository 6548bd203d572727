"""Exceptions to HTTP answers: every error leaves a service as JSON that names what was wrong.

The body is always ``{"error": <code>, "message": <text>, "detail": [...]}``; ``detail`` lists
the offending fields for validation errors (``{"loc": ["query", "limit"], "msg": ...}``).
Overload and deadline answers carry ``garrison-no-retry`` so the caller's layers do not multiply
the load (retries happen at one layer only).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.responses import Response

from garrison.core import (
    ConfigError,
    DeadlineExceeded,
    GarrisonError,
    InvalidInput,
    NotFound,
    PermissionDenied,
    RemoteStatusError,
    ServiceUnavailable,
    Unauthenticated,
    UsageError,
    json_encode,
)

__all__ = ["NO_RETRY_HEADER", "error_body", "error_response"]

NO_RETRY_HEADER = "garrison-no-retry"
_log = logging.getLogger("garrison.service")


def error_body(code: str, message: str, detail: list[dict[str, Any]] | None = None) -> bytes:
    """The JSON error body."""
    body: dict[str, Any] = {"error": code, "message": message}
    if detail:
        body["detail"] = detail
    return json_encode(body)


def _json(status: int, body: bytes, headers: Mapping[str, str] | None = None) -> Response:
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def error_response(exc: BaseException) -> Response:
    """Map an exception raised while handling a request to a JSON response."""
    if isinstance(exc, InvalidInput):
        return _json(422, error_body("invalid_input", str(exc), exc.errors))
    if isinstance(exc, Unauthenticated):
        return _json(
            401,
            error_body("unauthenticated", str(exc), [{"reason": exc.reason}]),
            {"www-authenticate": "Bearer"},
        )
    if isinstance(exc, PermissionDenied):
        return _json(403, error_body("forbidden", str(exc), [{"reason": exc.reason}]))
    if isinstance(exc, NotFound):
        return _json(404, error_body("not_found", str(exc)))
    if isinstance(exc, ConfigError):
        # The service is misconfigured: not the caller's fault, and its keys are internals.
        _log.error("request failed on a configuration error: %s", exc)
        return _json(500, error_body("internal", "internal server error"))
    if isinstance(exc, UsageError):
        return _json(400, error_body("bad_request", str(exc)))
    if isinstance(exc, DeadlineExceeded):
        # The transports' messages name the instance's URL: log it, do not pass it on.
        _log.info("request failed: %s", exc)
        return _json(
            504,
            error_body("deadline_exceeded", "the deadline was exceeded before the work was done"),
            {NO_RETRY_HEADER: "1"},
        )
    if isinstance(exc, ServiceUnavailable):
        headers = {} if exc.retryable else {NO_RETRY_HEADER: "1"}
        retry_after = getattr(exc, "retry_after", None)
        if isinstance(retry_after, int | float) and retry_after > 0:
            # Rounded up: a client told to wait less than the hint would come back too early.
            headers["retry-after"] = str(math.ceil(retry_after))
        return _json(503, error_body("unavailable", str(exc)), headers)
    if isinstance(exc, RemoteStatusError):
        # A dependency failed: this service could not do its job (502), whatever the
        # dependency's own status was; its body is not passed on (it may hold internals).
        return _json(502, error_body("upstream_error", f"{exc.service} answered {exc.status}"))
    if isinstance(exc, HTTPException):
        # Keep the exception's headers: a 405 must say which methods are allowed (Allow).
        return _json(
            exc.status_code, error_body(_code(exc.status_code), str(exc.detail)), exc.headers
        )
    if isinstance(exc, GarrisonError):
        # A TransportError's message names the peer's URL: log it, answer without it.
        _log.warning("request failed: %s", exc)
        message = f"a dependency failed ({type(exc).__name__})"
        return _json(502, error_body("upstream_error", message))
    _log.exception("unhandled error in handler", exc_info=exc)
    return _json(500, error_body("internal", "internal server error"))


def _code(status: int) -> str:
    return {
        400: "bad_request",
        401: "unauthenticated",
        403: "forbidden",
        404: "not_found",
        405: "method_not_allowed",
        409: "conflict",
        413: "too_large",
        415: "unsupported_media_type",
        429: "too_many_requests",
    }.get(status, "error")
