"""Serves a planned job on the local engine or a hosted alias and prices what that cost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeVar

import orjson

from ledger import PriceBook
from local_engine import Completion, GenerationFailedError, GenerationRequest, LocalBackend, StreamDelta
from router.errors import LocalOutputInvalidError, LocalUnavailableError, RoutingError
from router.hosted import HostedClient, HostedModel, usage_of
from router.job import Job, Outcome, Plan, Route
from router.verifiers import Draft, ResponseFormatVerifier

T = TypeVar("T")


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


def completion_body(job: Job, model: str, completion: Completion | Sequence[Completion]) -> dict[str, Any]:
    """An OpenAI chat.completion object for a local answer (one choice per completion), with draftgate's
    signals attached: the first choice's at the top, as for n = 1, and every choice's when there are more."""
    completions = [completion] if isinstance(completion, Completion) else list(completion)
    first = completions[0]
    extension: dict[str, Any] = {"confidence": first.confidence.as_dict()}
    if len(completions) > 1:
        extension["choices"] = [{"index": i, "confidence": c.confidence.as_dict()} for i, c in enumerate(completions)]
    return {
        "id": f"chatcmpl-{job.request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": i, "message": {"role": "assistant", "content": c.text, "refusal": None},
                     "logprobs": None, "finish_reason": c.finish_reason} for i, c in enumerate(completions)],
        "usage": usage_dict(first.prompt_tokens, sum(c.completion_tokens for c in completions),
                            first.cached_tokens),
        "draftgate": extension,
    }


def choice_seed(seed: int | None, index: int) -> int | None:
    """Choice i of a seeded n > 1 request is seeded seed + i (wrapped to int64), so the choices differ
    and the request stays repeatable; choice 0 keeps the request's own seed."""
    if seed is None or index == 0:
        return seed
    return (seed + index + 2**63) % 2**64 - 2**63


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

    def _check_choices(self, job: Job) -> None:
        # More choices than the engine's queue holds would be refused as "full" however long one waited.
        limit = self.local.max_rows
        if limit is not None and job.n > limit:
            raise RoutingError(f"n={job.n} is more choices than the local model can queue at once ({limit})")

    def generation_request(self, job: Job, plan: Plan, choice: int = 0) -> GenerationRequest:
        cap = min(job.max_tokens or self._local_max_tokens, plan.max_local_tokens or self._local_max_tokens)
        return GenerationRequest(request_id=job.request_id, messages=job.messages, max_tokens=cap,
                                 temperature=job.temperature, stop=job.stop, seed=choice_seed(job.seed, choice),
                                 top_p=job.top_p)

    def local_outcome(self, completion: Completion | Sequence[Completion], route: Route = Route.LOCAL) -> Outcome:
        """Ledger figures for a local answer (all its choices: the prompt counted once, as OpenAI bills n),
        with the all-hosted reference price."""
        completions = [completion] if isinstance(completion, Completion) else list(completion)
        first = completions[0]
        detail: dict[str, Any] = {"confidence": first.confidence.as_dict()}
        if len(completions) > 1:
            detail["choices"] = len(completions)
            detail["choice_confidence"] = [c.confidence.as_dict() for c in completions]
        if first.cached_tokens:
            detail["cached_prompt_tokens"] = first.cached_tokens
        return Outcome(route=route, provider_model=first.model, prompt_tokens=first.prompt_tokens,
                       completion_tokens=sum(c.completion_tokens for c in completions),
                       cached_tokens=first.cached_tokens, local_cost_usd=sum(c.cost_usd for c in completions),
                       device_seconds=sum(c.device_seconds for c in completions), detail=detail)

    async def run(self, job: Job, plan: Plan) -> Outcome:
        """Serves a non-streaming job; a local one's n choices are n rows of the engine's batch."""
        if plan.route is Route.LOCAL:
            completions, outcome = await self._checked_local_answer(job, plan)
            outcome.body = completion_body(job, self.local_alias, completions)
            return outcome
        return await self.run_hosted(job, plan.alias)

    async def _checked_local_answer(self, job: Job, plan: Plan) -> tuple[list[Completion], Outcome]:
        """Every choice, generated whole, and its ledger figures; LocalOutputInvalidError (carrying the cost)
        when a choice does not match the request's JSON `response_format`."""
        completions = await self._local_choices(job, plan)
        outcome = self.local_outcome(completions)
        if not ResponseFormatVerifier.applies(job.body):
            return completions, outcome
        verifier = ResponseFormatVerifier()
        for index, completion in enumerate(completions):
            verdict = await verifier.verify(Draft(text=completion.text, request=job.body))
            if not verdict.passed:
                outcome.detail["response_format"] = {"choice": index, "reason": verdict.reason}
                raise LocalOutputInvalidError(
                    f"the local model's answer{f' (choice {index})' if len(completions) > 1 else ''} does not "
                    f"match response_format: {verdict.reason}", outcome)
        return completions, outcome

    async def _local_choices(self, job: Job, plan: Plan) -> list[Completion]:
        self._check_choices(job)
        if job.n == 1:
            return [await self.local.generate(self.generation_request(job, plan))]
        # One choice failing (e.g. the queue is full) cancels the others.
        return await gathered_or_cancelled([asyncio.create_task(self.local.generate(
            self.generation_request(job, plan, i))) for i in range(job.n)])

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
        if plan.route is Route.LOCAL and ResponseFormatVerifier.applies(job.body):
            # The answer must be checked before its first byte: generated whole, then streamed.
            completions, outcome = await self._checked_local_answer(job, plan)
            return ChunkStream(outcome, completed_chunks(job, self.local_alias, completions))
        if plan.route is Route.LOCAL:
            outcome = Outcome(route=Route.LOCAL, provider_model=self.local.model_name)
            # Submitted, and each choice's first event awaited, here, before any byte is sent: a full queue
            # or a model server that is down is an HTTP error response, not an in-band error after a 200.
            self._check_choices(job)
            streams: list[AsyncIterator[StreamDelta | Completion]] = []
            try:
                for i in range(job.n):
                    streams.append(self.local.stream(self.generation_request(job, plan, i)))
                streams = await primed(streams)
            except BaseException:
                for opened in streams:
                    await opened.aclose()  # type: ignore[attr-defined]
                raise
            return ChunkStream(outcome, self._local_chunks(job, streams, outcome))
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

    async def _local_chunks(self, job: Job, streams: list[AsyncIterator[StreamDelta | Completion]],
                            outcome: Outcome) -> AsyncIterator[bytes]:
        chunks = LocalChunks(job, self.local_alias)
        try:
            for index in range(len(streams)):
                yield chunks.choice(index, {"role": "assistant", "content": ""})
            finished: dict[int, Completion] = {}
            async for index, event in merged(streams):
                if isinstance(event, StreamDelta):
                    if event.text:
                        yield chunks.choice(index, {"content": event.text})
                    continue
                finished[index] = event  # the ledger has each choice's cost as soon as it is done
                final = self.local_outcome([finished[i] for i in sorted(finished)])
                outcome.__dict__.update({k: v for k, v in final.__dict__.items() if k != "body"})
                yield chunks.choice(index, {}, event.finish_reason, draftgate={"confidence": event.confidence.as_dict()})
            if job.wants_usage:
                yield chunks.usage([finished[i] for i in sorted(finished)])
        finally:
            for stream in streams:  # a client gone before the first event: the rows are still cancelled
                await stream.aclose()  # type: ignore[attr-defined]


class LocalChunks:
    """OpenAI chunk bytes for one local answer, with the id, time and model all its chunks share."""

    def __init__(self, job: Job, model: str) -> None:
        self._base = {"id": f"chatcmpl-{job.request_id}", "object": "chat.completion.chunk",
                      "created": int(time.time()), "model": model, "system_fingerprint": None}
        self._usage_field = {"usage": None} if job.wants_usage else {}  # in every chunk once usage is asked for

    def choice(self, index: int, delta: dict[str, Any], finish: str | None = None, **more: Any) -> bytes:
        return orjson.dumps({**self._base, "choices": [{"index": index, "delta": delta, "logprobs": None,
                                                        "finish_reason": finish}], **self._usage_field, **more})

    def usage(self, completions: Sequence[Completion]) -> bytes:
        """The closing usage chunk of all the choices: the prompt counted once."""
        first = completions[0]
        return orjson.dumps({**self._base, "choices": [], "usage": usage_dict(
            first.prompt_tokens, sum(c.completion_tokens for c in completions), first.cached_tokens)})


async def completed_chunks(job: Job, model: str, completions: Sequence[Completion]) -> AsyncIterator[bytes]:
    """Finished local answers as an OpenAI chunk stream: each choice's text in one chunk."""
    chunks = LocalChunks(job, model)
    for index, completion in enumerate(completions):
        yield chunks.choice(index, {"role": "assistant", "content": ""})
        if completion.text:
            yield chunks.choice(index, {"content": completion.text})
        yield chunks.choice(index, {}, completion.finish_reason,
                            draftgate={"confidence": completion.confidence.as_dict()})
    if job.wants_usage:
        yield chunks.usage(completions)


async def gathered_or_cancelled(tasks: Sequence[asyncio.Future[T]]) -> list[T]:
    """Every task's result; when one fails (or the caller is cancelled) the others are cancelled and
    awaited, then the error is raised, so no choice's row is left running."""
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def primed(streams: list[AsyncIterator[StreamDelta | Completion]],
                 ) -> list[AsyncIterator[StreamDelta | Completion]]:
    """The streams again, each after its first event has arrived (so a failure to start is raised here)."""
    async def first(stream: AsyncIterator[StreamDelta | Completion]) -> StreamDelta | Completion:
        try:
            return await anext(stream)
        except StopAsyncIteration:
            raise GenerationFailedError("the local model ended a stream without a result") from None

    firsts = await gathered_or_cancelled([asyncio.ensure_future(first(stream)) for stream in streams])
    return [_Replayed(event, stream) for event, stream in zip(firsts, streams, strict=True)]


class _Replayed:
    """A stream whose first event was already taken: gives it back first; closing closes the stream even
    when it was never iterated (an async generator's `finally` would not run then)."""

    def __init__(self, first: StreamDelta | Completion, stream: AsyncIterator[StreamDelta | Completion]) -> None:
        self._first: StreamDelta | Completion | None = first
        self._stream = stream

    def __aiter__(self) -> _Replayed:
        return self

    async def __anext__(self) -> StreamDelta | Completion:
        if self._first is not None:
            event, self._first = self._first, None
            return event
        return await anext(self._stream)

    async def aclose(self) -> None:
        await self._stream.aclose()  # type: ignore[attr-defined]


async def merged(streams: list[AsyncIterator[StreamDelta | Completion]],
                 ) -> AsyncIterator[tuple[int, StreamDelta | Completion]]:
    """The events of several engine streams as they come, each with its stream's index; closing this
    closes them all (which cancels their rows). One stream, the common case, is read directly."""
    if len(streams) == 1:
        try:
            async for event in streams[0]:
                yield 0, event
        finally:
            await streams[0].aclose()  # type: ignore[attr-defined]
        return
    queue: asyncio.Queue[tuple[int, StreamDelta | Completion | Exception | None]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[StreamDelta | Completion]) -> None:
        try:
            async for event in stream:
                queue.put_nowait((index, event))
            queue.put_nowait((index, None))
        except Exception as exc:  # noqa: BLE001 - handed to the reader, which raises it
            queue.put_nowait((index, exc))
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    tasks = [asyncio.create_task(pump(i, stream)) for i, stream in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            index, item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
