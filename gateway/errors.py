"""The one place where errors become HTTP: OpenAI-style JSON bodies with the right status codes.

Inner packages raise their own exceptions carrying data; this module alone knows status codes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from ledger import DatabaseUnavailableError
from local_engine import (
    ContextLengthError,
    EngineError,
    EngineUnavailableError,
    QueueFullError,
    RequestRejectedError,
)
from policies import is_union_tag
from router.errors import (
    EmbeddingsUnsupportedError,
    LocalOutputInvalidError,
    LocalUnavailableError,
    RoutingError,
    UnknownModelError,
    UnsupportedParameterError,
    UpstreamCoolingDownError,
    UpstreamError,
    UpstreamRateLimitedError,
    UpstreamRejectedError,
)

log = logging.getLogger("draftgate")


class GatewayError(Exception):
    """An error the gateway reports to the client as is."""

    status_code = 400
    error_type = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}


class InvalidRequest(GatewayError):
    """The request is malformed or asks for something unsupported."""


class AuthenticationFailed(GatewayError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status_code = 403
    error_type = "permission_error"
    code = "insufficient_permissions"


class ModelNotAllowed(PermissionDenied):
    code = "model_not_allowed"


class NotFound(GatewayError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


class Conflict(GatewayError):
    """The request clashes with what is stored (a name another live key has)."""

    status_code = 409
    code = "conflict"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        # The OpenAI SDK retries a 409 (it means a lock timeout there): the same request would clash again.
        super().__init__(message, param=param, headers={"x-should-retry": "false"})


class PayloadTooLarge(GatewayError):
    status_code = 413
    code = "request_too_large"


@dataclass(frozen=True)
class ErrorReply:
    """Status, body fields and headers of one error response."""

    status: int
    message: str
    error_type: str
    code: str | None = None
    param: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


def error_response(reply: ErrorReply, extra_headers: dict[str, str] | None = None) -> Response:
    """Renders `{"error": {"message", "type", "param", "code"}}`."""
    body = {"error": {"message": reply.message, "type": reply.error_type, "param": reply.param,
                      "code": reply.code}}
    headers = dict(reply.headers)
    headers.update(extra_headers or {})
    return Response(orjson.dumps(body), status_code=reply.status, media_type="application/json",
                    headers=headers)


def reply_for(exc: BaseException) -> ErrorReply:
    """Maps any exception to what the client is told. Unknown ones become a bare 500."""
    if isinstance(exc, GatewayError):
        return ErrorReply(exc.status_code, exc.message, exc.error_type, exc.code, exc.param,
                          tuple(exc.headers.items()))
    if isinstance(exc, DatabaseUnavailableError):  # its cause is logged, not told: it names hosts
        return ErrorReply(503, "the gateway's database is unavailable; retry shortly", "api_error",
                          "database_unavailable", headers=(("retry-after", "5"),))
    if isinstance(exc, UnknownModelError):
        return ErrorReply(404, str(exc), "invalid_request_error", "model_not_found", "model")
    if isinstance(exc, UpstreamRejectedError):
        status = exc.status_code if exc.status_code and 400 <= exc.status_code < 500 else 400
        # The upstream's own code and param (context_length_exceeded, content_filter, ...): clients branch on them.
        return ErrorReply(status, f"upstream {exc.alias}: {exc.message}", "invalid_request_error",
                          exc.code or "upstream_rejected", exc.param)
    if isinstance(exc, UpstreamRateLimitedError):
        retry = max(1, math.ceil(exc.retry_after_s or 1))
        return ErrorReply(429, f"upstream {exc.alias} is rate-limiting after {exc.attempts} attempt(s): {exc.message}",
                          "rate_limit_error", "upstream_rate_limited", headers=(("retry-after", str(retry)),))
    if isinstance(exc, UpstreamCoolingDownError):
        return ErrorReply(503, f"upstream {exc.alias}: {exc.message}", "api_error", "upstream_cooling_down",
                          headers=(("retry-after", str(max(1, math.ceil(exc.retry_after_s)))),))
    if isinstance(exc, UpstreamError):
        # The gateway already retried and fell back: a client SDK retrying the whole chain again (the OpenAI
        # SDK retries a 5xx twice) would multiply the upstream calls, so it is told not to when there were retries.
        retried = (("x-should-retry", "false"),) if exc.attempts > 1 else ()
        return ErrorReply(502, f"upstream {exc.alias} failed after {exc.attempts} attempt(s): {exc.message}",
                          "api_error", "upstream_error", headers=retried)
    if isinstance(exc, LocalOutputInvalidError):
        # Retrying the same request (the OpenAI SDK retries any 5xx twice) spends the draft again, and at
        # temperature 0 gets the same answer: the client is told not to (the SDK honours x-should-retry).
        return ErrorReply(502, str(exc), "api_error", "local_output_invalid", headers=(("x-should-retry", "false"),))
    if isinstance(exc, QueueFullError):
        retry = max(1, round(exc.retry_after_s))
        return ErrorReply(429, "the local model's queue is full; retry later", "rate_limit_error",
                          "local_queue_full", headers=(("retry-after", str(retry)),))
    if isinstance(exc, ContextLengthError):  # OpenAI's code for it
        return ErrorReply(400, str(exc), "invalid_request_error", "context_length_exceeded", "messages")
    if isinstance(exc, RequestRejectedError):
        status = exc.status_code if 400 <= exc.status_code < 500 else 400
        return ErrorReply(status, str(exc), "invalid_request_error", "local_rejected")
    if isinstance(exc, (EngineUnavailableError, LocalUnavailableError)):
        return ErrorReply(503, str(exc) or "the local model is unavailable", "api_error", "local_unavailable",
                          headers=(("retry-after", "5"),))
    if isinstance(exc, EngineError):
        return ErrorReply(500, f"the local model failed: {exc}", "api_error", "local_error")
    if isinstance(exc, EmbeddingsUnsupportedError):
        return ErrorReply(400, str(exc), "invalid_request_error", "model_not_supported", "model")
    if isinstance(exc, UnsupportedParameterError):  # OpenAI's code for a parameter the model cannot take
        return ErrorReply(400, str(exc), "invalid_request_error", "unsupported_parameter", exc.param)
    if isinstance(exc, RoutingError):
        return ErrorReply(400, str(exc), "invalid_request_error", "routing_error")
    return ErrorReply(500, "internal error; the gateway logged the details", "api_error", "internal_error")


KNOWN_ERRORS: tuple[type[Exception], ...] = (GatewayError, RoutingError, EngineError,  # and their subclasses
                                              DatabaseUnavailableError)


def openai_param(loc: Sequence[Any]) -> str | None:
    """A pydantic error location as OpenAI names a parameter: `messages[0].content`, without `body` or the
    union-member tags pydantic adds (`content.str`)."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part != "body" and not is_union_tag(part):
            text += f".{part}" if text else str(part)
    return text or None


def validation_text(error: Mapping[str, Any]) -> str:
    """pydantic's message without the "Value error, " it puts before a validator's own words."""
    return str(error.get("msg", "")).removeprefix("Value error, ")


def _named_param(error: Mapping[str, Any]) -> str | None:
    """The parameter a cross-field check names (schemas.ParamError); its location is the whole body."""
    return getattr((error.get("ctx") or {}).get("error"), "param", None)


def _named_code(error: Mapping[str, Any]) -> str:
    """OpenAI's code a check gives (schemas.ParamError: `unsupported_parameter`), else `invalid_value`."""
    return getattr((error.get("ctx") or {}).get("error"), "code", None) or "invalid_value"


# What pydantic says of a body that is missing or not an object (a model validator's errors have the same `loc`)
NOT_AN_OBJECT = frozenset({"missing", "model_type", "model_attributes_type", "dict_type"})


def _validation_reply(exc: RequestValidationError, *, wanted: str) -> ErrorReply:
    errors = exc.errors()
    first = errors[0] if errors else {}
    param = _named_param(first) or openai_param(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        return ErrorReply(400, "the request body is not valid JSON", "invalid_request_error", "invalid_json")
    if tuple(first.get("loc", ())) == ("body",) and first.get("type") in NOT_AN_OBJECT:  # no body, `null`, `[]`
        missing = first.get("type") == "missing"
        return ErrorReply(400, f"the request body is missing: send {wanted}" if missing
                          else f"the request body must be {wanted}", "invalid_request_error",
                          "invalid_json" if missing else "invalid_value")
    if first.get("type") == "extra_forbidden":
        return ErrorReply(400, f"Unrecognized request argument supplied: {param}", "invalid_request_error",
                          "unknown_parameter", param)
    message = "; ".join(f"{_named_param(e) or openai_param(e.get('loc', ())) or 'body'}: {validation_text(e)}"
                        for e in errors[:5])
    return ErrorReply(400, message, "invalid_request_error", _named_code(first), param)


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves the gateway as OpenAI-style JSON, never as a traceback."""

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        path = request.url.path
        wanted = ("a JSON object with `model` and `messages`" if path.endswith("/chat/completions")
                  else "a JSON object with `model` and `prompt`" if path.endswith("/completions")
                  else "a JSON object with `model` and `input`" if path.endswith("/embeddings") else "a JSON object")
        return error_response(_validation_reply(exc, wanted=wanted), request_headers(request))

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        error_type = "invalid_request_error" if exc.status_code < 500 else "api_error"
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status_code)
        message = str(exc.detail)
        if exc.status_code == 400 and message == "There was an error parsing the body":  # bad UTF-8, deep nesting
            return error_response(ErrorReply(400, "the request body is not valid JSON", "invalid_request_error",
                                             "invalid_json"), request_headers(request))
        if exc.status_code == 404 and message == "Not Found":  # no such route (not a missing key or record)
            message = (f"draftgate does not serve {request.method} {request.url.path}; its OpenAI API is "
                       "POST /v1/chat/completions, POST /v1/completions, POST /v1/embeddings, GET /v1/models and "
                       "GET /v1/models/{id}")
        headers = {**request_headers(request), **(exc.headers or {})}  # e.g. a 405's Allow
        return error_response(ErrorReply(exc.status_code, message, error_type, code), headers)

    async def on_error(request: Request, exc: Exception) -> Response:
        reply = reply_for(exc)
        path = request.url.path
        if path.endswith("/completions") and not path.endswith("/chat/completions") and (reply.param or "").startswith(
                "messages"):  # a legacy completion's messages are its prompt: the client sent no `messages`
            reply = replace(reply, param="prompt")
        if not isinstance(exc, KNOWN_ERRORS):
            log.exception("unhandled error on %s", request.url.path, exc_info=exc)
        elif reply.status >= 500:  # expected failures (an upstream down, an invalid draft): one line each
            cause = exc if isinstance(exc, DatabaseUnavailableError) else reply.message
            log.warning("%s on %s: %s", reply.code, request.url.path, cause)
        return error_response(reply, request_headers(request))

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    # Known errors by class: Starlette answers them and keeps the connection open. The catch-all
    # `Exception` handler runs in ServerErrorMiddleware, which re-raises after answering, and the
    # server then closes a keep-alive connection the client may be about to reuse.
    for known in KNOWN_ERRORS:
        app.add_exception_handler(known, on_error)
    app.add_exception_handler(Exception, on_error)


def request_headers(request: Request) -> dict[str, str]:
    """The draftgate headers already decided for this request (id, route), for error replies too."""
    headers: dict[str, str] = getattr(request.state, "draftgate_headers", None) or {}
    return headers
