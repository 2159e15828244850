"""`backend: vllm`: local traffic goes to a pool of vLLM OpenAI-compatible servers.

vLLM serves DiffusionGemma with `--diffusion-config`; this backend speaks its `/v1/chat/completions`.
Device time is estimated as the request's latency divided by the requests in flight on that server
at the time (its share of a batched GPU), then priced like the in-process engine.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import httpx
import orjson

from local_engine.errors import EngineUnavailableError, GenerationFailedError
from local_engine.interface import Completion, Confidence, EngineConfig, GenerationRequest, StreamDelta
from local_engine.metering import DEFAULT_GPU_USD_PER_HOUR

NO_SIGNALS = Confidence(steps_per_canvas=(), step_cap_hit=False, tokens_per_pass=0.0, mean_entropy=0.0,
                        max_entropy=0.0)


class VllmBackend:
    """A LocalBackend over vLLM servers, least-busy first."""

    def __init__(self, config: EngineConfig, http: httpx.AsyncClient | None = None) -> None:
        if not config.api_bases:
            raise EngineUnavailableError("backend vllm needs at least one api_base")
        self._config = config
        self._bases = list(config.api_bases)
        self._in_flight = {base: 0 for base in self._bases}
        self._http = http
        self.model_name = config.served_model or config.model or "diffusiongemma"
        self._rate = config.device_usd_per_hour if config.device_usd_per_hour is not None else DEFAULT_GPU_USD_PER_HOUR

    async def start(self) -> None:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=httpx.Timeout(120.0, connect=5.0))

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def is_ready(self) -> bool:
        return self._http is not None

    def count_prompt_tokens(self, messages: Sequence[Mapping[str, Any]]) -> int:
        return sum(len(str(m.get("content") or "")) for m in messages) // 4

    def _pick(self) -> str:
        return min(self._bases, key=lambda b: self._in_flight[b])

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
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def _completion(self, text: str, finish: str, usage: Mapping[str, Any], seconds: float) -> Completion:
        details = usage.get("prompt_tokens_details") or {}  # vLLM fills it when its prefix caching is on
        return Completion(text=text, finish_reason=finish, prompt_tokens=int(usage.get("prompt_tokens") or 0),
                          completion_tokens=int(usage.get("completion_tokens") or 0), device_seconds=seconds,
                          cost_usd=seconds / 3600 * self._rate, confidence=NO_SIGNALS, model=self.model_name,
                          cached_tokens=int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0)

    async def generate(self, request: GenerationRequest) -> Completion:
        assert self._http is not None, "start() first"
        base = self._pick()
        self._in_flight[base] += 1
        share = self._in_flight[base]
        started = time.perf_counter()
        try:
            response = await self._http.post(base.rstrip("/") + "/chat/completions",
                                             content=orjson.dumps(self._body(request, False)),
                                             headers={"content-type": "application/json"})
        except httpx.HTTPError as exc:
            raise EngineUnavailableError(f"vLLM server {base} unreachable: {type(exc).__name__}") from exc
        finally:
            self._in_flight[base] -= 1
        if response.status_code != 200:
            raise GenerationFailedError(f"vLLM server {base} answered {response.status_code}")
        data = response.json()
        choice = data["choices"][0]
        seconds = (time.perf_counter() - started) / max(1, share)
        return self._completion(choice["message"].get("content") or "", choice.get("finish_reason") or "stop",
                                data.get("usage") or {}, seconds)

    def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta | Completion]:
        return self._stream(request)

    async def _stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta | Completion]:
        assert self._http is not None, "start() first"
        base = self._pick()
        self._in_flight[base] += 1
        share = self._in_flight[base]
        started, parts, finish = time.perf_counter(), [], "stop"
        usage: dict[str, Any] = {}
        try:
            async with self._http.stream("POST", base.rstrip("/") + "/chat/completions",
                                         content=orjson.dumps(self._body(request, True)),
                                         headers={"content-type": "application/json"}) as response:
                if response.status_code != 200:
                    raise GenerationFailedError(f"vLLM server {base} answered {response.status_code}")
                async for line in response.aiter_lines():
                    if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                        continue
                    chunk = orjson.loads(line[5:])
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices") or []:
                        text = (choice.get("delta") or {}).get("content") or ""
                        finish = choice.get("finish_reason") or finish
                        if text:
                            parts.append(text)
                            yield StreamDelta(text)
        except httpx.HTTPError as exc:
            raise EngineUnavailableError(f"vLLM server {base} failed: {type(exc).__name__}") from exc
        finally:
            self._in_flight[base] -= 1
        yield self._completion("".join(parts), finish, usage, (time.perf_counter() - started) / max(1, share))
