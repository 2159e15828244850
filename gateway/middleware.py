"""Pure ASGI middleware: request ids and draftgate headers on every response, and the body size limit."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_HEADERS = (("x-draftgate-route", "none"), ("x-draftgate-cost-usd", "0"))
log = logging.getLogger("draftgate")


class DraftgateHeaders:
    """Gives each request an id and makes sure every response says its id, route and cost."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        if _takes_json(scope["method"], scope["path"]):
            scope["headers"] = _as_json(scope.get("headers", []))
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["draftgate_headers"] = {"x-draftgate-request-id": request_id}

        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers: list[tuple[bytes, bytes]] = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                if b"x-draftgate-request-id" not in present:
                    headers.append((b"x-draftgate-request-id", request_id.encode()))
                if b"x-request-id" not in present:  # the OpenAI SDK's `response._request_id` reads this one
                    headers.append((b"x-request-id", request_id.encode()))
                for name, value in DEFAULT_HEADERS:
                    if name.encode() not in present:
                        headers.append((name.encode(), value.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except asyncio.CancelledError as exc:
            await _ended_by_shutdown(exc, started, scope, receive, send_with_headers)
        except Exception as exc:
            if started:  # a stream already under way: only closing the connection tells its client
                raise
            await _answer_bug(exc, scope, receive, send_with_headers)


async def _answer_bug(exc: Exception, scope: Scope, receive: Receive, send: Send) -> None:
    """An error no handler knows (a bug). Left to Starlette's outermost middleware, its 500 went out without the
    CORS headers (a browser app could not read it) or the request id (nothing to quote in a report), and the
    server closed the keep-alive connection. Answered here, inside CORS, it has both and the connection stays."""
    from gateway.errors import error_response, reply_for

    log.error("unhandled error on %s (request %s)", scope.get("path"), scope["state"]["request_id"], exc_info=exc)
    await error_response(reply_for(exc))(scope, receive, send)


async def _ended_by_shutdown(exc: asyncio.CancelledError, started: bool, scope: Scope, receive: Receive,
                             send: Send) -> None:
    """A request uvicorn cancelled at its graceful-shutdown timeout (already recorded as cancelled): raised on, it
    was a traceback per request in the log and a plain-text 500 to its client. A client still waiting gets a 503
    to retry elsewhere; a stream already started is cut (uvicorn closes the connection), so its client sees an
    error, not an answer that merely stopped. Any other cancellation propagates."""
    from gateway.errors import ErrorReply, error_response
    from gateway.pipeline import SHUTDOWN_REASON, cancel_reason

    if cancel_reason(exc) != SHUTDOWN_REASON:
        raise exc
    log.warning("request %s ended unfinished: the server is shutting down", scope["state"]["request_id"])
    if not started:
        reply = ErrorReply(503, "the server is shutting down; retry the request", "api_error",
                           "server_shutting_down", headers=(("retry-after", "1"),))
        await error_response(reply)(scope, receive, send)


class CanonicalRequest:
    """Serves HEAD as GET (the server sends no body) and a path with a trailing slash as the path without it:
    FastAPI answered both with something no client expects, a 405 to a HEAD health check (`curl -I`, uptime
    monitors), and an empty 307 for `/v1/chat/completions/` that curl does not follow and that, behind a TLS
    proxy, points the client's key at plain http."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            changed: dict[str, Any] = {}
            if scope["method"] == "HEAD":
                changed["method"] = "GET"
            if len(path) > 1 and path.endswith("/"):
                changed["path"] = path.rstrip("/") or "/"
                raw = scope.get("raw_path")
                if isinstance(raw, bytes):
                    changed["raw_path"] = raw.rstrip(b"/") or b"/"
            if changed:  # a copy: the server reads its own scope's method to leave a HEAD reply's body out
                scope.setdefault("state", {})  # shared, so the outermost 500 handler still finds the request id
                scope = {**scope, **changed}
        await self.app(scope, receive, send)


def _takes_json(method: str, path: str) -> bool:
    """The routes whose body is JSON: a chat, completions or embeddings request and the admin API's key bodies (`curl -d` to `/admin/keys`
    was told its JSON object "must be a JSON object"). The dashboard's sign-in form keeps its form type."""
    return (method == "POST" and path.endswith(("/completions", "/embeddings"))) or (
        method in ("POST", "PATCH") and (path == "/admin/keys" or path.startswith("/admin/keys/")))


def _as_json(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """A JSON body is read as JSON whatever its content type says (curl -d sends a form type; some clients none),
    as LiteLLM's proxy reads it: without this the body is not parsed and the error blames its shape."""
    kept = [(name, value) for name, value in headers if name.lower() != b"content-type"]
    declared = [value for name, value in headers if name.lower() == b"content-type"]
    if declared and b"json" in declared[0].lower():
        return headers
    return [*kept, (b"content-type", b"application/json")]


class _TooLarge(HTTPException):
    """Raised from receive(); an HTTPException so frameworks that wrap body errors let it through."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body exceeds {max_bytes} bytes")


class BodyLimit:
    """Refuses bodies over `max_bytes` with 413 before they are buffered, by header or by counting."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_large = int(value) > self.max_bytes
                except ValueError:
                    too_large = False
                if too_large:
                    await self._reject(send)
                    return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send: Send) -> None:
        body = orjson.dumps({"error": {"message": f"request body exceeds {self.max_bytes} bytes",
                                       "type": "invalid_request_error", "param": None,
                                       "code": "request_too_large"}})
        headers: list[Any] = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
