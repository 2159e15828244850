"""Serves a planned job on the local engine or a hosted alias and prices what that cost."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from ledger import PriceBook
from local_engine import Completion, GenerationRequest, LocalBackend, StreamDelta
from router.errors import LocalUnavailableError
from router.hosted import HostedClient, HostedModel, usage_of
from router.job import Job, Outcome, Plan, Route


class Pricing:
    """Prices hosted tokens per alias: YAML overrides first, then LiteLLM's cost map."""

    def __init__(self, prices: PriceBook, hosted: HostedClient, reference_alias: str | None) -> None:
        self._prices = prices
        self._hosted = hosted
        self._reference = reference_alias

    def hosted_cost(self, model: HostedModel, prompt_tokens: int, completion_tokens: int) -> float | None:
        """USD for these tokens at this alias; None when no price is known."""
        if self._prices.lookup(model.alias) is not None:
            return self._prices.cost_usd(model.alias, prompt_tokens, completion_tokens)
        return self._prices.cost_usd(model.model, prompt_tokens, completion_tokens)

    def reference_cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        """What the same tokens would cost at the reference hosted model (all-hosted counterfactual)."""
        if self._reference is None or self._reference not in self._hosted:
            return None
        return self.hosted_cost(self._hosted.get(self._reference), prompt_tokens, completion_tokens)


def completion_body(job: Job, model: str, completion: Completion) -> dict[str, Any]:
    """An OpenAI chat.completion object for a local answer, with draftgate's signals attached."""
    return {
        "id": f"chatcmpl-{job.request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": completion.text, "refusal": None},
                     "logprobs": None, "finish_reason": completion.finish_reason}],
        "usage": usage_dict(completion.prompt_tokens, completion.completion_tokens, completion.cached_tokens),
        "draftgate": {"confidence": completion.confidence.as_dict()},
    }


def usage_dict(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    """OpenAI's usage object; `cached_tokens` are prompt tokens served from the engine's prefix cache."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


class ChunkStream:
    """Chunk payloads (JSON bytes, OpenAI chunk format) for a streamed job; `outcome` is final after iteration."""

    def __init__(self, outcome: Outcome, chunks: AsyncIterator[bytes]) -> None:
        self.outcome = outcome
        self._chunks = chunks

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks


class Executor:
    """Runs plans. Local generations are capped by the plan; hosted ones go through the hosted client."""

    def __init__(self, hosted: HostedClient, local: LocalBackend | None, pricing: Pricing,
                 *, local_alias: str, local_max_tokens: int) -> None:
        self._hosted = hosted
        self._local = local
        self._pricing = pricing
        self.local_alias = local_alias
        self._local_max_tokens = local_max_tokens

    @property
    def local(self) -> LocalBackend:
        if self._local is None:
            raise LocalUnavailableError("the local model is not loaded on this gateway")
        return self._local

    def generation_request(self, job: Job, plan: Plan) -> GenerationRequest:
        cap = min(job.max_tokens or self._local_max_tokens, plan.max_local_tokens or self._local_max_tokens)
        return GenerationRequest(request_id=job.request_id, messages=job.messages, max_tokens=cap,
                                 temperature=job.temperature, stop=job.stop, seed=job.seed)

    def local_outcome(self, completion: Completion, route: Route = Route.LOCAL) -> Outcome:
        """Ledger figures for a local answer, with the all-hosted reference price."""
        detail: dict[str, Any] = {"confidence": completion.confidence.as_dict()}
        if completion.cached_tokens:
            detail["cached_prompt_tokens"] = completion.cached_tokens
        return Outcome(route=route, provider_model=completion.model, prompt_tokens=completion.prompt_tokens,
                       completion_tokens=completion.completion_tokens, cached_tokens=completion.cached_tokens,
                       local_cost_usd=completion.cost_usd, device_seconds=completion.device_seconds, detail=detail)

    async def run(self, job: Job, plan: Plan) -> Outcome:
        """Serves a non-streaming job."""
        if plan.route is Route.LOCAL:
            completion = await self.local.generate(self.generation_request(job, plan))
            outcome = self.local_outcome(completion)
            outcome.body = completion_body(job, self.local_alias, completion)
            return outcome
        return await self.run_hosted(job, plan.alias)

    async def run_hosted(self, job: Job, alias: str) -> Outcome:
        """Serves a job at a hosted alias (with its retries and fallbacks)."""
        result = await self._hosted.complete(alias, job.upstream_body)
        prompt_tokens, completion_tokens = usage_of(result.body) or (0, 0)
        cost = self._pricing.hosted_cost(result.model, prompt_tokens, completion_tokens)
        detail: dict[str, Any] = {}
        if usage_of(result.body) is None:
            detail["usage_missing"] = True
        return Outcome(route=Route.HOSTED, provider_model=result.model.model, prompt_tokens=prompt_tokens,
                       completion_tokens=completion_tokens, hosted_cost_usd=cost, unpriced=cost is None,
                       attempts=[a.as_dict() for a in result.attempts], detail=detail, body=result.body)

    async def stream(self, job: Job, plan: Plan) -> ChunkStream:
        """Opens a streaming job; hosted retries happen here, before the first byte is sent."""
        if plan.route is Route.LOCAL:
            outcome = Outcome(route=Route.LOCAL, provider_model=self.local.model_name)
            return ChunkStream(outcome, self._local_chunks(job, plan, outcome))
        return await self.stream_hosted(job, plan.alias)

    async def stream_hosted(self, job: Job, alias: str) -> ChunkStream:
        opened = await self._hosted.stream(alias, job.upstream_body)
        outcome = Outcome(route=Route.HOSTED, provider_model=opened.model.model,
                          attempts=[a.as_dict() for a in opened.attempts])
        return ChunkStream(outcome, self._hosted_chunks(job, opened, outcome))

    async def _hosted_chunks(self, job: Job, opened: Any, outcome: Outcome) -> AsyncIterator[bytes]:
        chunks = 0
        try:
            async for payload in opened.lines():
                if b'"usage":{' in payload or b'"usage": {' in payload:
                    chunk = orjson.loads(payload)
                    usage = usage_of(chunk)
                    if usage is not None:
                        outcome.prompt_tokens, outcome.completion_tokens = usage
                    if not chunk.get("choices") and not job.wants_usage:
                        continue
                chunks += 1
                yield payload
        finally:
            await opened.aclose()
            if not outcome.prompt_tokens and not outcome.completion_tokens and chunks:
                outcome.detail["usage_missing"] = True
            cost = self._pricing.hosted_cost(opened.model, outcome.prompt_tokens, outcome.completion_tokens)
            outcome.hosted_cost_usd = cost
            outcome.unpriced = cost is None

    async def _local_chunks(self, job: Job, plan: Plan, outcome: Outcome) -> AsyncIterator[bytes]:
        chunk_id, created = f"chatcmpl-{job.request_id}", int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            body: dict[str, Any] = {"id": chunk_id, "object": "chat.completion.chunk", "created": created,
                                    "model": self.local_alias, "system_fingerprint": None,
                                    "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                 "finish_reason": finish}]}
            if job.wants_usage:
                body["usage"] = None
            body.update(extra)
            return orjson.dumps(body)

        yield chunk({"role": "assistant", "content": ""})
        events = self.local.stream(self.generation_request(job, plan))
        try:
            async for event in events:
                if isinstance(event, StreamDelta):
                    if event.text:
                        yield chunk({"content": event.text})
                    continue
                final = self.local_outcome(event)
                outcome.__dict__.update({k: v for k, v in final.__dict__.items() if k != "body"})
                yield chunk({}, event.finish_reason, draftgate={"confidence": event.confidence.as_dict()})
                if job.wants_usage:
                    yield orjson.dumps({"id": chunk_id, "object": "chat.completion.chunk", "created": created,
                                        "model": self.local_alias, "system_fingerprint": None, "choices": [],
                                        "usage": usage_dict(event.prompt_tokens, event.completion_tokens,
                                                            event.cached_tokens)})
        finally:
            await events.aclose()  # type: ignore[attr-defined]
