"""Hosted model calls: retries, timeouts and fallbacks around one upstream transport per alias.

OpenAI-compatible upstreams (`openai/...` models, any `api_base`) are called with one shared
aiohttp connection pool; other providers go through LiteLLM, which translates their APIs. The choice
is measured in `bench/litellm_overhead.py`: LiteLLM's call path costs milliseconds per request,
far more than the rest of the gateway, so it stays off the hot path where it adds nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from router.errors import (
    UnknownModelError,
    UpstreamCoolingDownError,
    UpstreamError,
    UpstreamRateLimitedError,
    UpstreamRejectedError,
)
from router.litellm_transport import LiteLLMTransport
from router.transport import (
    AttemptFailed,
    OpenAITransport,
    StreamBroken,
    Transport,
    UpstreamStream,
    is_error_event,
    stream_error,
)
from router.usage import TokenEstimator, answer_text, believable, usage_of

MAX_RETRY_AFTER_S = 30.0
RETRYABLE_4XX = frozenset({408, 409, 429})
OPENAI_COMPATIBLE = frozenset({"openai", "openai_compatible", "custom_openai"})


@dataclass(frozen=True)
class HostedModel:
    """One configured alias: which provider model, where, with which credentials and limits."""

    alias: str
    model: str
    api_base: str | None = None
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = 60.0
    max_retries: int = 2
    fallbacks: tuple[str, ...] = ()
    allowed_fails: int = 3
    cooldown_time: float = 5.0

    @property
    def provider(self) -> str:
        """The LiteLLM provider prefix (`openai` for `openai/gpt-4o-mini`)."""
        return self.model.split("/", 1)[0] if "/" in self.model else "openai"

    @property
    def upstream_name(self) -> str:
        """The model name the provider itself expects."""
        return self.model.split("/", 1)[1] if "/" in self.model else self.model


@dataclass(frozen=True)
class Attempt:
    """One upstream call, successful or not, as the ledger records it."""

    alias: str
    provider_model: str
    status_code: int | None
    error: str | None
    latency_ms: float
    skipped: bool = False  # not sent: the alias was cooling down
    cancelled: bool = False  # sent, then abandoned (its client gone) before the upstream answered
    billed: bool = False  # the provider charges it though no usable answer came (a broken 200, or `cancelled`)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"alias": self.alias, "provider_model": self.provider_model,
                               "status_code": self.status_code, "error": self.error,
                               "latency_ms": round(self.latency_ms, 3)}
        if self.skipped:
            out["skipped"] = True
        if self.cancelled:
            out["cancelled"] = True
        if self.billed:
            out["billed"] = True
        return out


@dataclass
class Health:
    """An alias's failed requests in a row, and until when it is skipped (a LiteLLM-style cooldown)."""

    failures: int = 0
    cooling_until: float = 0.0


@dataclass
class HostedResult:
    """A finished non-streaming completion and how it was obtained."""

    body: dict[str, Any]
    model: HostedModel
    attempts: list[Attempt]


@dataclass
class HostedStream:
    """An open stream; iterate `lines()` for SSE `data:` payloads. Attempts so far are final."""

    model: HostedModel
    attempts: list[Attempt]
    upstream: UpstreamStream

    def lines(self) -> AsyncIterator[bytes]:
        """JSON payloads of the upstream's chunks, in order, without the `data: ` prefix or [DONE]."""
        return self.upstream.lines()

    @property
    def done(self) -> bool:
        return self.upstream.done

    async def aclose(self) -> None:
        await self.upstream.aclose()


class _PrimedStream:
    """An upstream stream whose first payload was already read: handed out first, then the rest."""

    def __init__(self, first: bytes, rest: AsyncIterator[bytes], upstream: UpstreamStream) -> None:
        self._first, self._rest, self._upstream = first, rest, upstream
        self.done = False

    async def lines(self) -> AsyncIterator[bytes]:
        yield self._first
        async for payload in self._rest:
            yield payload
        self.done = self._upstream.done

    async def aclose(self) -> None:
        await self._upstream.aclose()


async def primed(upstream: UpstreamStream, model: HostedModel) -> UpstreamStream:
    """The stream once its first payload has come. Failing before it (the connection dropped, an error event, an
    empty body, silence past the read timeout), nothing has reached the client: the attempt failed and is retried or falls
    back like a refused one, billed as a broken 200 is (the upstream had accepted the request)."""
    lines = upstream.lines()
    try:
        first = await anext(lines)
        if first.lstrip().startswith(b"{") and is_error_event(orjson.loads(first)):
            raise stream_error(first, model)
    except StopAsyncIteration:  # a body without a chunk (`[DONE]` at once, or cut): nothing to relay either
        await upstream.aclose()
        raise AttemptFailed(f"upstream {model.alias} ended its stream before its first chunk", status_code=502,
                            retryable=True, error_type="stream_interrupted", billed=True) from None
    except orjson.JSONDecodeError:  # malformed: the relay ends the stream on it
        pass
    except StreamBroken as exc:
        await upstream.aclose()
        raise AttemptFailed(exc.message, status_code=502, retryable=True, error_type=exc.error_type,
                            billed=True) from exc
    except BaseException:
        await upstream.aclose()
        raise
    return _PrimedStream(first, lines, upstream)


async def _complete(transport: Transport, model: HostedModel, body: dict[str, Any]) -> dict[str, Any]:
    return await transport.complete(model, body)


async def _stream(transport: Transport, model: HostedModel, body: dict[str, Any]) -> UpstreamStream:
    return await primed(await transport.open_stream(model, body), model)


async def _embed(transport: Transport, model: HostedModel, body: dict[str, Any]) -> dict[str, Any]:
    return await transport.embed(model, body)


Call = Callable[[Transport, HostedModel, dict[str, Any]], Awaitable[dict[str, Any] | UpstreamStream]]


def _is_retryable(exc: BaseException) -> bool:
    """Worth another try at the same alias: a transient failure, unless the upstream asked for a pause longer
    than a request is held for (a retry sooner is one it asked not to get: the fallbacks, or the client, go next)."""
    return (isinstance(exc, AttemptFailed) and exc.retryable
            and (exc.retry_after_s is None or exc.retry_after_s <= MAX_RETRY_AFTER_S))


# A bad key, no access, an unknown model name: this upstream's own setup, so the next alias may answer.
FALLBACK_STATUSES = frozenset({401, 403, 404})


def _rejects_request(exc: AttemptFailed) -> bool:
    """A 4xx no retry can fix: the request's fault or this upstream's setup (401/403/404). A 3xx (an `http://`
    api_base redirected to https) or another odd status is the upstream's failure, never the client's."""
    return not exc.retryable and (exc.status_code is None or 400 <= exc.status_code < 500)


def _stops_chain(exc: AttemptFailed) -> bool:
    """Whether every fallback would fail the same way: the request itself was rejected (400, 413, 422 …)."""
    return _rejects_request(exc) and exc.status_code not in FALLBACK_STATUSES


def _make_wait(backoff_initial_s: float) -> Any:
    backoff = wait_exponential_jitter(initial=backoff_initial_s, max=8.0, jitter=backoff_initial_s)

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, AttemptFailed) and exc.retry_after_s is not None:
            return min(exc.retry_after_s, MAX_RETRY_AFTER_S)
        return float(backoff(state))

    return wait


class HostedClient:
    """Calls hosted aliases with retries (tenacity) and per-alias fallbacks."""

    def __init__(self, models: Mapping[str, HostedModel], *, backoff_initial_s: float = 0.25,
                 openai: OpenAITransport | None = None) -> None:
        self._models = dict(models)
        self._openai = openai or OpenAITransport()
        self._litellm = LiteLLMTransport()
        self._wait = _make_wait(backoff_initial_s)
        self._health = {alias: Health() for alias in self._models}  # per process, like LiteLLM's in-memory one

    def get(self, alias: str) -> HostedModel:
        """The configured model for an alias; UnknownModelError otherwise."""
        try:
            return self._models[alias]
        except KeyError:
            raise UnknownModelError(alias) from None

    async def aclose(self) -> None:
        """Closes the shared connection pool (shutdown)."""
        await self._openai.aclose()

    def __contains__(self, alias: object) -> bool:
        return alias in self._models

    @property
    def aliases(self) -> list[str]:
        return list(self._models)

    def _transport(self, model: HostedModel) -> Transport:
        if model.provider in OPENAI_COMPATIBLE:
            return self._openai
        return self._litellm

    def chain(self, alias: str) -> list[HostedModel]:
        """The alias's model, then its configured fallbacks, in the order they are tried."""
        first = self.get(alias)
        return [first] + [self._models[a] for a in first.fallbacks if a in self._models]

    async def complete(self, alias: str, body: dict[str, Any], attempts: list[Attempt] | None = None,
                       ) -> HostedResult:
        """A non-streaming completion from `alias` or, failing that, its fallbacks in order. `attempts`, when
        given, is filled as they happen: a caller cancelled meanwhile still sees what was sent (the last one
        marked `cancelled` when it was in flight, which the upstream bills)."""
        model, attempts, response = await self._through_chain(alias, body, [] if attempts is None else attempts,
                                                              _complete)
        return HostedResult(body=cast(dict[str, Any], response), model=model, attempts=attempts)

    async def embed(self, alias: str, body: dict[str, Any], attempts: list[Attempt] | None = None,
                    ) -> HostedResult:
        """An embeddings list from `alias` or its fallbacks, with the same retries, cooldowns and `attempts`
        as `complete`."""
        model, attempts, response = await self._through_chain(alias, body, [] if attempts is None else attempts,
                                                              _embed)
        return HostedResult(body=cast(dict[str, Any], response), model=model, attempts=attempts)

    async def stream(self, alias: str, body: dict[str, Any], attempts: list[Attempt] | None = None,
                     ) -> HostedStream:
        """Opens a stream; retries and fallbacks apply until the upstream accepts the request. `attempts`
        as for `complete`."""
        model, attempts, upstream = await self._through_chain(alias, body, [] if attempts is None else attempts,
                                                              _stream)
        return HostedStream(model=model, attempts=attempts, upstream=cast(UpstreamStream, upstream))

    async def _through_chain(self, alias: str, body: dict[str, Any], attempts: list[Attempt], call: Call,
                             ) -> tuple[HostedModel, list[Attempt], dict[str, Any] | UpstreamStream]:
        """The first alias of the fallback chain that answers; a rejected request stops the chain."""
        last: AttemptFailed | None = None
        cooling: list[float] = []
        for model in self.chain(alias):
            health = self._health[model.alias]
            left = health.cooling_until - time.monotonic()
            if left > 0:  # it failed its last requests: skip it rather than make this one wait out its retries
                cooling.append(left)
                attempts.append(Attempt(model.alias, model.model, None, f"cooling down for {left:.1f} s more after "
                                        f"{model.allowed_fails} failed requests", 0.0, skipped=True))
                continue
            try:
                result = await self._with_retries(model, body, attempts, call)
            except AttemptFailed as exc:
                last = exc
                if _stops_chain(exc):  # the request's own fault says nothing about the upstream's health
                    break
                self._failed(model, health)
                if exc.status_code == 429 and exc.retry_after_s:  # it asked for a pause: no request calls it sooner
                    health.cooling_until = max(health.cooling_until, time.monotonic() + exc.retry_after_s)
                continue
            health.failures = 0
            return model, attempts, result
        if last is None and cooling:
            raise UpstreamCoolingDownError(alias, min(cooling))
        raise self._final_error(alias, last, attempts)

    @staticmethod
    def _failed(model: HostedModel, health: Health) -> None:
        health.failures += 1
        if health.failures >= model.allowed_fails and model.cooldown_time > 0:
            health.cooling_until = time.monotonic() + model.cooldown_time
            health.failures = 0

    async def _with_retries(self, model: HostedModel, body: dict[str, Any], attempts: list[Attempt],
                            call: Call) -> dict[str, Any] | UpstreamStream:
        transport = self._transport(model)
        retrying = AsyncRetrying(stop=stop_after_attempt(model.max_retries + 1), wait=self._wait,
                                 retry=retry_if_exception(_is_retryable), reraise=True)
        async for attempt in retrying:
            with attempt:
                started = time.perf_counter()
                try:
                    result = await call(transport, model, body)
                except AttemptFailed as exc:
                    attempts.append(Attempt(model.alias, model.model, exc.status_code, exc.message,
                                            (time.perf_counter() - started) * 1000, billed=exc.billed))
                    raise
                except asyncio.CancelledError:
                    attempts.append(Attempt(model.alias, model.model, None, "cancelled: the client left before "
                                            "the upstream answered", (time.perf_counter() - started) * 1000,
                                            cancelled=True, billed=True))
                    raise
                attempts.append(Attempt(model.alias, model.model, 200, None,
                                        (time.perf_counter() - started) * 1000))
                return result
        raise AssertionError("unreachable: tenacity reraises the last failure")

    @staticmethod
    def _final_error(alias: str, last: AttemptFailed | None, attempts: list[Attempt]) -> UpstreamError:
        if last is None:
            return UpstreamError(alias, "no upstream was tried", attempts=len(attempts))
        tried = sum(not a.skipped for a in attempts)
        if last.status_code == 429:  # as LiteLLM does: the client's SDK backs off and retries a 429
            return UpstreamRateLimitedError(alias, last.message, retry_after_s=last.retry_after_s, attempts=tried)
        cls = UpstreamRejectedError if _rejects_request(last) else UpstreamError
        return cls(alias, last.message, status_code=last.status_code, error_type=last.error_type, attempts=tried,
                   code=last.code, param=last.param)


def parse_chunk(line: bytes) -> dict[str, Any]:
    """Parses one relayed chunk payload."""
    value = orjson.loads(line)
    if not isinstance(value, dict):
        raise ValueError("chunk is not a JSON object")
    return value


async def answer_usage(tokens: TokenEstimator, result: HostedResult,
                       messages: Sequence[Mapping[str, Any]]) -> tuple[tuple[int, int], bool]:
    """A hosted answer's (prompt, completion) tokens as its upstream reported them, else counted here (the
    provider still billed it: never $0); and whether they were counted."""
    usage = believable(usage_of(result.body), answer_text(result.body))
    if usage is not None:
        return usage, False
    return await asyncio.to_thread(tokens.usage, result.model.model, messages, [answer_text(result.body)]), True
