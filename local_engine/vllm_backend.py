"""`backend: vllm`: local traffic goes to a pool of vLLM OpenAI-compatible servers.

vLLM serves DiffusionGemma with `--diffusion-config`; this backend speaks its `/v1/chat/completions`.
Device time is the request's share of its server's busy time: each moment a server has k of this
gateway's requests in flight is split k ways (they share its batched GPU), so the shares add up to the
time the server was busy, whatever order the requests came in; then priced like the in-process engine.

It applies vLLM's sampling parameters (logprobs, penalties, logit_bias, top_k, min_p,
repetition_penalty: `capabilities`) and relays the logprobs it returns. Tools stay with hosted models:
vLLM calls them only when its server was started with `--enable-auto-tool-choice` and a parser this
gateway cannot know.

A request goes to the least busy server; one that cannot be reached, answers 5xx, or fails before the
answer's first token is skipped for COOL_DOWN_S and the request tried on the next, before anything is
streamed. Servers that are all busy
(429/503) make a QueueFullError with the shortest Retry-After they gave; a 4xx is the request's own fault
and is not retried elsewhere.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Collection, Mapping, Sequence
from dataclasses import fields
from typing import Any, ClassVar, cast

import httpx
import orjson

from local_engine.errors import (
    EngineUnavailableError,
    GenerationFailedError,
    QueueFullError,
    RequestRejectedError,
)
from local_engine.interface import (
    Completion,
    Confidence,
    EngineConfig,
    GenerationRequest,
    LocalCapabilities,
    SamplingOptions,
    StreamDelta,
    TokenLogprob,
)
from local_engine.metering import DEFAULT_GPU_USD_PER_HOUR

COOL_DOWN_S = 5.0  # a server that failed is tried last for this long
HEALTH_TIMEOUT_S = 2.0  # a readiness probe waits this long for each server
BUSY_STATUSES = frozenset({429, 503})
CHARS_PER_TOKEN = 4  # the estimate of a count the server did not report (as `count_prompt_tokens` makes it)
NO_SIGNALS = Confidence(steps_per_canvas=(), step_cap_hit=False, tokens_per_pass=0.0, mean_entropy=0.0,
                        max_entropy=0.0, measured=False)  # vLLM reports no denoising signals


class VllmBackend:
    """A LocalBackend over vLLM servers, least-busy first."""

    capabilities: ClassVar[LocalCapabilities] = LocalCapabilities(
        sampling_options=frozenset(f.name for f in fields(SamplingOptions)))  # vLLM applies every one

    def __init__(self, config: EngineConfig, http: httpx.AsyncClient | None = None) -> None:
        if not config.api_bases:
            raise EngineUnavailableError("backend vllm needs at least one api_base")
        self._config = config
        self._bases = list(config.api_bases)
        self._clocks = {base: ShareClock() for base in self._bases}
        self._down_until = {base: 0.0 for base in self._bases}
        self._http = http
        self.model_name = config.served_model or config.model or "diffusiongemma"
        self.context_length: int | None = config.max_model_len  # the servers' own limit is theirs to enforce
        self._rate = config.device_usd_per_hour if config.device_usd_per_hour is not None else DEFAULT_GPU_USD_PER_HOUR

    async def start(self) -> None:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=httpx.Timeout(self._config.timeout_s,
                                                                  connect=min(5.0, self._config.timeout_s)))

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def is_ready(self) -> bool:
        """Some server of the pool answers vLLM's `/health` with 200 (a pool all down, or whose engines died
        behind live API servers, is not ready: every local request would fail)."""
        if self._http is None:
            return False
        return any(await asyncio.gather(*(self._healthy(base) for base in self._bases)))

    async def _healthy(self, base: str) -> bool:
        assert self._http is not None
        root = base.rstrip("/").removesuffix("/v1")  # vLLM serves /health beside /v1, not under it
        try:
            response = await self._http.get(root + "/health", timeout=HEALTH_TIMEOUT_S)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def count_prompt_tokens(self, messages: Sequence[Mapping[str, Any]]) -> int:
        return sum(len(str(m.get("content") or "")) for m in messages) // CHARS_PER_TOKEN

    def _cool_down(self, base: str) -> None:
        """A server that failed a request is tried last for COOL_DOWN_S."""
        self._down_until[base] = time.monotonic() + COOL_DOWN_S

    def _order(self) -> list[str]:
        """Servers to try, healthy before recently failed ones, least busy first."""
        now = time.monotonic()
        return sorted(self._bases, key=lambda b: (self._down_until[b] > now, self._clocks[b].in_flight))

    async def _open(self, request: GenerationRequest, stream: bool,
                    skip: Collection[str] = ()) -> tuple[httpx.Response, str, float]:
        """The first server's 200 response (body not read yet), its base and its share clock's reading at
        the start; the caller closes it and leaves the server's clock (which gives back its in-flight slot).
        Servers in `skip` already failed this request."""
        assert self._http is not None, "start() first"
        content = orjson.dumps(self._body(request, stream))
        headers = {"content-type": "application/json"}
        if self._config.api_key:  # a server started with --api-key refuses every request without it (401)
            headers["authorization"] = f"Bearer {self._config.api_key}"
        failures: list[str] = []
        busy: list[float] = []
        for base in [b for b in self._order() if b not in skip]:
            clock = self._clocks[base]
            started, opened = clock.join(), False
            try:
                response = await self._http.send(
                    self._http.build_request("POST", base.rstrip("/") + "/chat/completions", content=content,
                                             headers=headers), stream=True)
                if response.status_code == 200:
                    opened = True
                    return response, base, started
                try:
                    detail = _refusal(await response.aread())
                except httpx.HTTPError:
                    detail = ""
                finally:
                    await response.aclose()
            except httpx.HTTPError as exc:
                self._cool_down(base)
                failures.append(f"{base} unreachable: {type(exc).__name__}")
                continue
            finally:
                if not opened:  # cancelled or refused: the slot is free again
                    clock.leave()
            status = response.status_code
            if status in BUSY_STATUSES:
                busy.append(_retry_after(response.headers.get("retry-after")))
            elif status >= 500:
                self._cool_down(base)
                failures.append(f"{base} answered {status}")
            else:
                raise RequestRejectedError(f"vLLM server {base} refused the request ({status}): {detail}", status)
        if busy:  # some server is only busy: worth retrying after its Retry-After
            raise QueueFullError(retry_after_s=min(busy), queued=len(busy))
        raise EngineUnavailableError("no vLLM server could take the request: " + "; ".join(failures or ["all busy"]))

    def _body(self, request: GenerationRequest, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model_name, "messages": list(request.messages), "stream": stream,
                                "max_tokens": min(request.max_tokens or self._config.max_tokens,
                                                  self._config.max_tokens)}
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.stop:
            body["stop"] = list(request.stop)
        if request.seed is not None:
            body["seed"] = request.seed
        if request.top_p is not None:
            body["top_p"] = request.top_p
        body.update(request.options.asked())
        if stream:  # vLLM's running usage in every chunk: a stream left midway is still charged what it used
            body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
        return body

    def _tokens(self, usage: Mapping[str, Any], request: GenerationRequest, chars: int) -> tuple[int, int, bool]:
        """(prompt, completion, estimated): the server's counts, or, where it sent none that can be true (a
        server or proxy that drops `usage`, or garbles it: a string, a negative number), counts estimated here
        at CHARS_PER_TOKEN (`chars`: the answer's so far), so that no row says 0 tokens and no wrong figure fails
        the request after its work."""
        prompt, completion = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
        if prompt is not None and completion is not None:
            return prompt, completion, False
        if prompt is None:
            prompt = max(1, self.count_prompt_tokens(request.messages))
        return prompt, completion if completion is not None else -(-chars // CHARS_PER_TOKEN), True

    def _completion(self, request: GenerationRequest, text: str, finish: str, usage: Mapping[str, Any],
                    seconds: float, logprobs: tuple[TokenLogprob, ...] | None) -> Completion:
        details = usage.get("prompt_tokens_details")  # vLLM fills it when its prefix caching is on
        cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else None
        prompt, completion, estimated = self._tokens(usage, request, len(text))
        return Completion(text=text, finish_reason=finish, prompt_tokens=prompt, completion_tokens=completion,
                          device_seconds=seconds, cost_usd=seconds / 3600 * self._rate, confidence=NO_SIGNALS,
                          model=self.model_name, cached_tokens=min(cached or 0, prompt), logprobs=logprobs,
                          usage_estimated=estimated)

    async def generate(self, request: GenerationRequest) -> Completion:
        response, base, started = await self._open(request, stream=False)
        try:
            data = orjson.loads(await response.aread())
        except (httpx.HTTPError, orjson.JSONDecodeError) as exc:
            raise EngineUnavailableError(f"vLLM server {base} failed: {type(exc).__name__}") from exc
        finally:
            await response.aclose()
            ended = self._clocks[base].leave()
        choices = data.get("choices") if isinstance(data, dict) else None
        choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
        message = choice.get("message")
        if not isinstance(message, dict):
            raise EngineUnavailableError(f"vLLM server {base} answered without a choice's message")
        seconds = ended - started
        text = message.get("content")
        return self._completion(request, text if isinstance(text, str) else "", choice.get("finish_reason") or "stop",
                                _usage(data), seconds, _logprobs(choice))

    def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta | Completion]:
        return self._stream(request)

    async def _stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta | Completion]:
        """The first server's events; one failing before the first of them (an error event, a cut or
        malformed stream: a dead engine behind a live API server answers 200 so) sits out its cool-down and
        the request goes to the next, as for a 5xx."""
        failed: list[str] = []
        while True:
            response, base, started = await self._open(request, stream=True, skip=failed)
            events = self._events(request, response, base, started)
            try:
                first = await anext(events)
            except (EngineUnavailableError, GenerationFailedError):
                self._cool_down(base)
                failed.append(base)
                if len(failed) == len(self._bases):
                    raise
                continue
            break
        try:
            yield first
            async for event in events:
                yield event
        finally:
            await events.aclose()

    async def _events(self, request: GenerationRequest, response: httpx.Response, base: str,
                      started: float) -> AsyncGenerator[StreamDelta | Completion, None]:
        """One server's answer as events; closes the response and leaves the server's clock at the end."""
        clock = self._clocks[base]
        parts: list[str] = []
        finish: str | None = None  # only a finish_reason says the answer is whole
        usage: dict[str, Any] = {}
        logprobs: list[TokenLogprob] | None = None  # every token's, once a chunk carried any
        try:
            async for line in response.aiter_lines():
                if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                    continue
                chunk = _chunk(line[5:], base)
                if "error" in chunk or chunk.get("object") == "error":  # vLLM's in-stream error event
                    raise GenerationFailedError(f"vLLM server {base} failed mid-answer: {_error_message(chunk)}")
                usage = _usage(chunk) or usage
                for choice in _choices(chunk):
                    delta = choice.get("delta")
                    text = delta.get("content") if isinstance(delta, dict) else None
                    text = text if isinstance(text, str) else ""
                    reason = choice.get("finish_reason")
                    finish = reason if isinstance(reason, str) and reason else finish
                    tokens = _logprobs(choice)
                    if tokens is not None:
                        logprobs = logprobs if logprobs is not None else []
                        logprobs.extend(tokens)
                    if text or tokens:  # a token can decode to no text yet (part of a character)
                        parts.append(text)
                        seconds = clock.read() - started
                        prompt, completion, estimated = self._tokens(usage, request, sum(map(len, parts)))
                        yield StreamDelta(text, prompt_tokens=prompt, completion_tokens=completion,
                                          device_seconds=seconds, cost_usd=seconds / 3600 * self._rate,
                                          logprobs=tokens, usage_estimated=estimated)
        except httpx.HTTPError as exc:
            raise EngineUnavailableError(f"vLLM server {base} failed: {type(exc).__name__}") from exc
        finally:
            await response.aclose()
            ended = clock.leave()
        if finish is None:  # the body ended cleanly, but the answer did not: not a whole answer to pass on
            raise EngineUnavailableError(f"vLLM server {base} ended the stream before a finish_reason")
        yield self._completion(request, "".join(parts), finish, usage, ended - started,
                               None if logprobs is None else tuple(logprobs))


class ShareClock:
    """One server's busy time, each moment split evenly among the requests in flight on it: a request's
    device time is how far the clock moved while it ran, and the requests' times add up to the busy time."""

    def __init__(self) -> None:
        self.in_flight = 0
        self._shared_s = 0.0  # seconds of busy time per request, summed over the server's life
        self._at = time.perf_counter()

    def read(self) -> float:
        """The clock now (seconds); a request's share is the difference of two readings."""
        now = time.perf_counter()
        if self.in_flight:
            self._shared_s += (now - self._at) / self.in_flight
        self._at = now
        return self._shared_s

    def join(self) -> float:
        """A request starts: the reading its share counts from."""
        reading = self.read()
        self.in_flight += 1
        return reading

    def leave(self) -> float:
        """A request ends: the reading its share counts to."""
        reading = self.read()
        self.in_flight -= 1
        return reading


def _chunk(payload: str, base: str) -> dict[str, Any]:
    """One stream chunk's JSON object; anything else is the server's failure, not the gateway's."""
    try:
        chunk = orjson.loads(payload)
    except orjson.JSONDecodeError:
        chunk = None
    if not isinstance(chunk, dict):
        raise EngineUnavailableError(f"vLLM server {base} sent a malformed stream chunk")
    return chunk


def _choices(chunk: Mapping[str, Any]) -> list[dict[str, Any]]:
    choices = chunk.get("choices")
    return [c for c in choices if isinstance(c, dict)] if isinstance(choices, list) else []


def _logprobs(choice: Mapping[str, Any]) -> tuple[TokenLogprob, ...] | None:
    """A choice's (or a chunk's) `logprobs.content` entries as vLLM sent them, in OpenAI's shape already;
    None when it sent none (not asked for)."""
    logprobs = choice.get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(content, list):
        return None
    return cast("tuple[TokenLogprob, ...]", tuple(entry for entry in content if isinstance(entry, dict)))


def _usage(data: Mapping[str, Any]) -> dict[str, Any]:
    usage = data.get("usage") if isinstance(data, Mapping) else None
    return usage if isinstance(usage, dict) else {}


def _error_message(body: Mapping[str, Any], fallback: str = "an error event") -> str:
    """The message of OpenAI's error object or of vLLM's top-level ErrorResponse."""
    error = body.get("error")
    message = error.get("message") if isinstance(error, dict) else body.get("message")
    return str(message)[:300] if message else fallback


def _refusal(content: bytes) -> str:
    """What an error response says (the client reads it inside draftgate's own error): its message, else
    the body's start."""
    start = content[:300].decode("utf-8", "replace")
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return start
    return _error_message(body, start) if isinstance(body, dict) else start


def _count(value: Any) -> int | None:
    """A token count as a server reports it; None for what cannot be one (missing, a string, a boolean, a
    fraction, a negative number)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _retry_after(value: str | None) -> float:
    try:
        return min(60.0, max(0.0, float(value))) if value else 1.0
    except ValueError:
        return 1.0
