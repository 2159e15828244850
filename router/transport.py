"""Upstream transports: one HTTP call to a provider, no retries (the hosted client adds those)."""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import math
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeGuard

import aiohttp
import orjson

if TYPE_CHECKING:
    from router.hosted import HostedModel

OPENAI_DEFAULT_BASE = "https://api.openai.com/v1"


class AttemptFailed(Exception):
    """One upstream attempt failed; `retryable` says whether trying again can help."""

    def __init__(self, message: str, *, status_code: int | None = None, retryable: bool,
                 retry_after_s: float | None = None, error_type: str | None = None, code: str | None = None,
                 param: str | None = None, billed: bool = False) -> None:
        super().__init__(message)
        self.billed = billed  # the provider charges it: it answered 200 unusably, or was given up on while it had it
        self.message = message
        self.status_code = status_code
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.error_type = error_type
        self.code = code  # the upstream's own error code and param (context_length_exceeded, ...): clients
        self.param = param  # branch on them, so a refusal relays them


class StreamBroken(AttemptFailed):
    """The upstream stream failed after it had started; it cannot be retried transparently."""


class UpstreamStream(Protocol):
    """An accepted upstream stream of chat-completion chunks."""

    done: bool  # the upstream ended with `[DONE]`: it says the answer is whole, finish_reason or not

    def lines(self) -> AsyncIterator[bytes]: ...
    async def aclose(self) -> None: ...


class Transport(Protocol):
    """One provider protocol."""

    async def complete(self, model: HostedModel, body: dict[str, Any]) -> dict[str, Any]: ...
    async def open_stream(self, model: HostedModel, body: dict[str, Any]) -> UpstreamStream: ...
    async def embed(self, model: HostedModel, body: dict[str, Any]) -> dict[str, Any]: ...


MAX_PAUSE_S = 86400.0  # the longest pause an upstream's `Retry-After` is believed for: a day's quota


def _pause(seconds: float) -> float | None:
    """A pause as the gateway uses it: `inf`, `nan` or `1e400` would rest an alias for ever (or fail rounding)."""
    return min(max(0.0, seconds), MAX_PAUSE_S) if math.isfinite(seconds) else None


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from `retry-after-ms` or `Retry-After` (seconds or an HTTP date); None when neither can
    be read (`Retry-After: soon` must not fail the attempt's handling)."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return _pause(float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return _pause(float(value))
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (ValueError, TypeError, IndexError, OverflowError):  # what the stdlib raises on text that is no date
        return None
    if parsed.tzinfo is None:  # `-0000`: UTC with no zone named (RFC 5322), not this machine's local time
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return _pause(parsed.timestamp() - time.time())


def is_retryable_status(status: int) -> bool:
    """5xx and 408/409/429 may succeed later; other 4xx will not."""
    return status >= 500 or status in (408, 409, 429)


class _UpstreamErrorBody(NamedTuple):
    message: str
    error_type: str | None = None
    code: str | None = None
    param: str | None = None


def short_text(value: Any) -> str | None:
    return str(value)[:256] if isinstance(value, (str, int)) and not isinstance(value, bool) and value != "" else None


def _error_message(content: bytes, status: int) -> _UpstreamErrorBody:
    try:
        data = orjson.loads(content)
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, str):
            return _UpstreamErrorBody(err)
        vllm = data if isinstance(data, dict) and data.get("object") == "error" else None  # fields at the top
        for found in (err, vllm):  # OpenAI's {"error": {...}} first, then vLLM's ErrorResponse
            if isinstance(found, dict) and found.get("message"):
                return _UpstreamErrorBody(str(found["message"]), short_text(found.get("type")),
                                          short_text(found.get("code")), short_text(found.get("param")))
    except orjson.JSONDecodeError:
        pass
    text = content.decode("utf-8", "replace").strip()[:500]
    return _UpstreamErrorBody(text or f"upstream returned HTTP {status}")


def is_error_event(chunk: Mapping[str, Any]) -> bool:
    """A stream event that is an error, however worded: `{ "error": …}`, `{"object": "error", …}` (vLLM)."""
    return bool(chunk.get("error")) or chunk.get("object") == "error"


def stream_error(payload: bytes, model: HostedModel) -> StreamBroken:
    """The failure an error event inside an upstream stream ends the client's stream with."""
    error = _error_message(payload, 502)
    return StreamBroken(redact(error.message, model), retryable=False, error_type=error.error_type)


def redact(message: str, model: HostedModel) -> str:
    """Upstream text with the model's own API key blanked out: some upstreams and proxies echo it."""
    return message.replace(model.api_key, "[redacted]") if model.api_key else message


def _failure_from_response(status: int, content: bytes, headers: Mapping[str, str],
                           model: HostedModel) -> AttemptFailed:
    error = _error_message(content, status)
    return AttemptFailed(redact(error.message, model), status_code=status, retryable=is_retryable_status(status),
                         retry_after_s=retry_after_seconds(headers), error_type=error.error_type, code=error.code,
                         param=error.param)


async def _read_at_most(response: aiohttp.ClientResponse, limit: int, model: HostedModel) -> bytes:
    """The body, refused past `limit` bytes: read whole, a runaway upstream would exhaust the gateway's memory.
    The upstream did answer (and bills it), so the attempt is billed like a broken 200, and retried."""
    too_big = AttemptFailed(f"upstream {model.alias} sent an answer over {limit} bytes", status_code=502,
                            retryable=True, billed=True)
    if (response.content_length or 0) > limit:
        raise too_big
    body = bytearray()
    async for piece in response.content.iter_chunked(1 << 16):
        body += piece
        if len(body) > limit:
            raise too_big
    return bytes(body)


def _failure_from_transport(exc: BaseException, model: HostedModel) -> AttemptFailed:
    if isinstance(exc, asyncio.TimeoutError):  # aiohttp's connect and read timeouts are TimeoutErrors
        # Past the connect, the upstream had the request and works on it whether or not this side waits: it
        # bills the attempt, as it bills one whose client left (the provider's usage is never seen here). The
        # connect limit is always under `timeout_s` (`connect_limit`), so a connect that hangs is told by its type.
        return AttemptFailed(f"upstream {model.alias} timed out after {model.timeout_s:g}s", retryable=True,
                             status_code=None, error_type="timeout",
                             billed=not isinstance(exc, aiohttp.ConnectionTimeoutError))
    return AttemptFailed(f"could not reach upstream {model.alias}: {type(exc).__name__}", retryable=True,
                         error_type="connection_error")


TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)


def connect_limit(timeout_s: float) -> float:
    """The socket connect's limit: 10 s, and always under the attempt's own `timeout_s`, so that a connect that hangs
    ends as aiohttp's ConnectionTimeoutError (never sent: not billed) rather than as the whole-call timeout, which
    cannot say whether the request was sent (an aiohttp trace hook could, at ~30 us per call on the hot path)."""
    return min(10.0, 0.9 * timeout_s)


def has_usable_embeddings(data: Any) -> TypeGuard[dict[str, Any]]:
    """An embeddings list body: a non-empty `data` of objects that each hold an `embedding` (floats or base64)."""
    items = data.get("data") if isinstance(data, dict) else None
    return (isinstance(items, list) and bool(items)
            and all(isinstance(i, dict) and isinstance(i.get("embedding"), (list, str)) for i in items))


def has_usable_choices(data: Any) -> TypeGuard[dict[str, Any]]:
    """A chat.completion body with at least one choice, each an object with a `message` object."""
    choices = data.get("choices") if isinstance(data, dict) else None
    return (isinstance(choices, list) and bool(choices)
            and all(isinstance(c, dict) and isinstance(c.get("message"), dict) for c in choices))


MAX_RESPONSE_BYTES = 64 * 1024 * 1024  # a non-streaming answer larger than this is an upstream gone haywire
_DRAIN_LIMIT = 4096  # bytes after `[DONE]` worth reading to keep a connection; more means a misbehaving upstream
_DRAIN_TIMEOUT_S = 1.0


class _HTTPStream:
    """SSE lines of an accepted streaming response."""

    def __init__(self, response: aiohttp.ClientResponse, model: HostedModel,
                 background: set[asyncio.Task[None]]) -> None:
        self._response = response
        self._model = model
        self._background = background
        self._finished = False  # read to `[DONE]` or the end: the pool (or the drain task) owns the connection
        self.done = False

    async def _raw_lines(self) -> AsyncIterator[bytes]:
        """The body's lines, however long up to MAX_RESPONSE_BYTES: aiohttp's own line reader refuses one over
        twice its buffer (~2 MiB), which a large tool call or an image in one delta is."""
        buffer = bytearray()  # the line begun and not ended yet
        async for piece in self._response.content.iter_any():
            if b"\n" not in piece:
                buffer += piece
                if len(buffer) > MAX_RESPONSE_BYTES:
                    raise StreamBroken(f"upstream {self._model.alias} sent a stream line over {MAX_RESPONSE_BYTES} "
                                       "bytes", retryable=False, error_type="stream_interrupted")
                continue
            first, *more = piece.split(b"\n")
            buffer += first
            yield bytes(buffer)
            for line in more[:-1]:
                yield line
            buffer = bytearray(more[-1])
        if buffer:
            yield bytes(buffer)

    async def lines(self) -> AsyncIterator[bytes]:
        count = 0
        try:
            async for raw in self._raw_lines():
                # Buffered lines are handed out without awaiting: give the event loop a turn now and
                # then, or one fast stream starves every other task (disconnect checks included).
                count += 1
                if count % 16 == 0:
                    await asyncio.sleep(0)
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    self._finished = self.done = True
                    return
                yield payload
            self._finished = True
        except TRANSPORT_ERRORS as exc:
            raise StreamBroken(f"upstream {self._model.alias} stream broke: {type(exc).__name__}",
                               retryable=False, error_type="stream_interrupted") from exc
        finally:
            if self._finished and not self._response.content.at_eof():
                # The body's end may still be on its way after `[DONE]`: read it off the client's path,
                # so the connection goes back to the pool instead of a new one per stream.
                task = asyncio.get_running_loop().create_task(self._drain_then_release())
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            elif self._finished:
                self._response.release()
            else:
                self._response.close()  # a stream left early must not go back to the pool half-read

    async def _drain_then_release(self) -> None:
        content = self._response.content
        seen = 0
        try:
            async with asyncio.timeout(_DRAIN_TIMEOUT_S):
                while not content.at_eof() and seen <= _DRAIN_LIMIT:
                    chunk = await content.read(_DRAIN_LIMIT)
                    if not chunk:
                        break
                    seen += len(chunk)
        except TRANSPORT_ERRORS:
            pass
        if content.at_eof() and seen <= _DRAIN_LIMIT:
            self._response.release()
        else:
            self._response.close()

    async def aclose(self) -> None:
        if not self._finished:
            self._response.close()


class OpenAITransport:
    """Direct calls to OpenAI-compatible `/chat/completions` and `/embeddings` over one shared aiohttp connection pool.

    aiohttp, not httpx, on this hot path: in one side-by-side run (bench/http_clients.py) the same
    keep-alive POSTs reached ~13,000 req/s with aiohttp and ~350 with an httpx pool sized for a
    gateway, whose per-request scan of idle connections (encode/httpcore#1035) dominated.
    """

    def __init__(self, *, max_connections: int = 1000) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._draining: set[asyncio.Task[None]] = set()  # streams reading their last bytes after `[DONE]`

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use, inside the running event loop it belongs to.
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0, keepalive_timeout=30,
                                             ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, read_bufsize=2**20, trust_env=False,
                                                  auto_decompress=True)
        return self._session

    async def aclose(self) -> None:
        if self._draining:
            await asyncio.gather(*self._draining, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _request(self, model: HostedModel, body: dict[str, Any], *, stream: bool, path: str = "/chat/completions",
                 ) -> tuple[str, bytes, dict[str, str], aiohttp.ClientTimeout]:
        """The call's URL, body, headers and timeouts: `timeout_s` bounds a whole non-streaming attempt (as
        LiteLLM's `timeout`: an upstream that trickles its answer must not hold a request for ever); a stream
        may last, so it is bounded by its silences (each read) and by the wait for its headers (`open_stream`)."""
        url = (model.api_base or OPENAI_DEFAULT_BASE).rstrip("/") + path
        headers = {"content-type": "application/json"}
        if model.api_key:
            headers["authorization"] = f"Bearer {model.api_key}"
        payload = orjson.dumps({**body, "model": model.upstream_name})
        timeout = aiohttp.ClientTimeout(total=None if stream else model.timeout_s,
                                        sock_connect=connect_limit(model.timeout_s), sock_read=model.timeout_s)
        return url, payload, headers, timeout

    async def _post(self, model: HostedModel, body: dict[str, Any], path: str) -> Any:
        """One non-streaming call's parsed JSON answer; an error status, or a body that is not JSON, fails it."""
        url, payload, headers, timeout = self._request(model, body, stream=False, path=path)
        try:
            async with self._client().post(url, data=payload, headers=headers, timeout=timeout,
                                           allow_redirects=False) as response:
                content = await _read_at_most(response, MAX_RESPONSE_BYTES, model)
                status, response_headers = response.status, response.headers
        except TRANSPORT_ERRORS as exc:
            raise _failure_from_transport(exc, model) from exc
        if status != 200:
            raise _failure_from_response(status, content, response_headers, model)
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise AttemptFailed(f"upstream {model.alias} sent invalid JSON", status_code=502,
                                retryable=True, billed=True) from exc

    async def complete(self, model: HostedModel, body: dict[str, Any]) -> dict[str, Any]:
        data = await self._post(model, body, "/chat/completions")
        if not has_usable_choices(data):  # `choices: null`, `[]`, no message: relayed, the client's SDK fails on it
            raise AttemptFailed(f"upstream {model.alias} sent no choices", status_code=502, retryable=True,
                                billed=True)
        return data

    async def embed(self, model: HostedModel, body: dict[str, Any]) -> dict[str, Any]:
        """`POST {api_base}/embeddings`, relayed as the upstream sent it (base64 vectors stay base64)."""
        data = await self._post(model, body, "/embeddings")
        if not has_usable_embeddings(data):  # billed: the upstream did the work, then answered unusably
            raise AttemptFailed(f"upstream {model.alias} sent no embeddings", status_code=502, retryable=True,
                                billed=True)
        return data

    async def open_stream(self, model: HostedModel, body: dict[str, Any]) -> UpstreamStream:
        url, payload, headers, timeout = self._request(model, body, stream=True)
        try:
            async with asyncio.timeout(model.timeout_s):  # to the headers, however they trickle in
                response = await self._client().post(url, data=payload, headers=headers, timeout=timeout,
                                                     allow_redirects=False)
        except TRANSPORT_ERRORS as exc:
            raise _failure_from_transport(exc, model) from exc
        if response.status != 200:
            try:
                content = await response.read()
            except TRANSPORT_ERRORS as exc:
                raise _failure_from_transport(exc, model) from exc
            finally:
                response.release()
            raise _failure_from_response(response.status, content, response.headers, model)
        return _HTTPStream(response, model, self._draining)
