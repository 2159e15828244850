"""Upstream transports: one HTTP call to a provider, no retries (the hosted client adds those)."""

from __future__ import annotations

import email.utils
import importlib
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol

import httpx
import orjson

if TYPE_CHECKING:
    from router.hosted import HostedModel

OPENAI_DEFAULT_BASE = "https://api.openai.com/v1"


class AttemptFailed(Exception):
    """One upstream attempt failed; `retryable` says whether trying again can help."""

    def __init__(self, message: str, *, status_code: int | None = None, retryable: bool,
                 retry_after_s: float | None = None, error_type: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.error_type = error_type


class StreamBroken(AttemptFailed):
    """The upstream stream failed after it had started; it cannot be retried transparently."""


class UpstreamStream(Protocol):
    """An accepted upstream stream of chat-completion chunks."""

    def lines(self) -> AsyncIterator[bytes]: ...
    async def aclose(self) -> None: ...


class Transport(Protocol):
    """One provider protocol."""

    async def complete(self, model: HostedModel, body: dict[str, Any]) -> dict[str, Any]: ...
    async def open_stream(self, model: HostedModel, body: dict[str, Any]) -> UpstreamStream: ...


def retry_after_seconds(headers: httpx.Headers) -> float | None:
    """Seconds to wait from `retry-after-ms` or `Retry-After` (seconds or an HTTP date)."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return None if parsed is None else max(0.0, parsed.timestamp() - time.time())


def is_retryable_status(status: int) -> bool:
    """5xx and 408/409/429 may succeed later; other 4xx will not."""
    return status >= 500 or status in (408, 409, 429)


def _error_message(content: bytes, status: int) -> tuple[str, str | None]:
    try:
        data = orjson.loads(content)
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"]), (str(err["type"]) if err.get("type") else None)
        if isinstance(err, str):
            return err, None
    except orjson.JSONDecodeError:
        pass
    text = content.decode("utf-8", "replace").strip()[:500]
    return (text or f"upstream returned HTTP {status}"), None


def redact(message: str, model: HostedModel) -> str:
    """Upstream text with the model's own API key blanked out: some upstreams and proxies echo it."""
    return message.replace(model.api_key, "[redacted]") if model.api_key else message


def _failure_from_response(response: httpx.Response, model: HostedModel) -> AttemptFailed:
    message, error_type = _error_message(response.content, response.status_code)
    return AttemptFailed(redact(message, model), status_code=response.status_code,
                         retryable=is_retryable_status(response.status_code),
                         retry_after_s=retry_after_seconds(response.headers), error_type=error_type)


def _failure_from_transport(exc: httpx.HTTPError, model: HostedModel) -> AttemptFailed:
    if isinstance(exc, httpx.TimeoutException):
        return AttemptFailed(f"upstream {model.alias} timed out after {model.timeout_s:g}s", retryable=True,
                             status_code=None, error_type="timeout")
    return AttemptFailed(f"could not reach upstream {model.alias}: {type(exc).__name__}", retryable=True,
                         error_type="connection_error")


class _HTTPStream:
    """SSE lines of an accepted httpx streaming response."""

    def __init__(self, response: httpx.Response, model: HostedModel) -> None:
        self._response = response
        self._model = model

    async def lines(self) -> AsyncIterator[bytes]:
        try:
            async for line in self._response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    return
                if payload.startswith('{"error"'):
                    message, error_type = _error_message(payload.encode(), 502)
                    raise StreamBroken(redact(message, self._model), retryable=False, error_type=error_type)
                yield payload.encode()
        except httpx.HTTPError as exc:
            raise StreamBroken(f"upstream {self._model.alias} stream broke: {type(exc).__name__}",
                               retryable=False, error_type="stream_interrupted") from exc
        finally:
            await self._response.aclose()

    async def aclose(self) -> None:
        await self._response.aclose()


class OpenAITransport:
    """Direct calls to OpenAI-compatible `/chat/completions` over a shared connection pool."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http

    def _request(self, model: HostedModel, body: dict[str, Any]) -> httpx.Request:
        url = (model.api_base or OPENAI_DEFAULT_BASE).rstrip("/") + "/chat/completions"
        headers = {"content-type": "application/json"}
        if model.api_key:
            headers["authorization"] = f"Bearer {model.api_key}"
        payload = {**body, "model": model.upstream_name}
        timeout = httpx.Timeout(model.timeout_s, connect=min(10.0, model.timeout_s))
        return self._http.build_request("POST", url, content=orjson.dumps(payload), headers=headers,
                                        timeout=timeout)

    async def complete(self, model: HostedModel, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = await self._http.send(self._request(model, body))
        except httpx.HTTPError as exc:
            raise _failure_from_transport(exc, model) from exc
        if response.status_code != 200:
            raise _failure_from_response(response, model)
        try:
            data = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise AttemptFailed(f"upstream {model.alias} sent invalid JSON", status_code=502,
                                retryable=True) from exc
        if not isinstance(data, dict) or "choices" not in data:
            raise AttemptFailed(f"upstream {model.alias} sent no choices", status_code=502, retryable=True)
        return data

    async def open_stream(self, model: HostedModel, body: dict[str, Any]) -> UpstreamStream:
        try:
            response = await self._http.send(self._request(model, body), stream=True)
        except httpx.HTTPError as exc:
            raise _failure_from_transport(exc, model) from exc
        if response.status_code != 200:
            try:
                await response.aread()
            except httpx.HTTPError as exc:
                raise _failure_from_transport(exc, model) from exc
            finally:
                await response.aclose()
            raise _failure_from_response(response, model)
        return _HTTPStream(response, model)


class _LiteLLMStream:
    def __init__(self, chunks: Any, model: HostedModel) -> None:
        self._chunks = chunks
        self._model = model

    async def lines(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._chunks:
                yield orjson.dumps(chunk.model_dump(exclude_none=True))
        except Exception as exc:  # noqa: BLE001 - LiteLLM raises provider-specific types
            message = redact(f"upstream {self._model.alias} stream broke: {exc}", self._model)
            raise StreamBroken(message, retryable=False, error_type="stream_interrupted") from exc

    async def aclose(self) -> None:
        close = getattr(self._chunks, "aclose", None)
        if close is not None:
            await close()


class LiteLLMTransport:
    """Providers that need request translation (Anthropic, Bedrock, Vertex, ...) via LiteLLM."""

    def __init__(self) -> None:
        self._module: Any = None

    def _litellm(self) -> Any:
        # Imported on first use: importing LiteLLM costs seconds that OpenAI-only setups never pay.
        if self._module is None:
            self._module = importlib.import_module("litellm")
            self._module.suppress_debug_info = True
        return self._module

    async def _call(self, model: HostedModel, body: dict[str, Any], stream: bool) -> Any:
        litellm = self._litellm()
        kwargs = {k: v for k, v in body.items() if k not in ("model", "stream")}
        try:
            return await litellm.acompletion(model=model.model, api_base=model.api_base, api_key=model.api_key,
                                             timeout=model.timeout_s, num_retries=0, stream=stream, **kwargs)
        except Exception as exc:  # noqa: BLE001 - LiteLLM maps providers onto its own exception zoo
            status = getattr(exc, "status_code", None)
            status = int(status) if isinstance(status, int) else None
            retryable = status is None or is_retryable_status(status)
            message = redact(str(getattr(exc, "message", None) or exc), model)
            raise AttemptFailed(message, status_code=status, retryable=retryable,
                                error_type=type(exc).__name__) from exc

    async def complete(self, model: HostedModel, body: dict[str, Any]) -> dict[str, Any]:
        response = await self._call(model, body, stream=False)
        data: dict[str, Any] = response.model_dump(exclude_none=True)
        return data

    async def open_stream(self, model: HostedModel, body: dict[str, Any]) -> UpstreamStream:
        return _LiteLLMStream(await self._call(model, body, stream=True), model)
