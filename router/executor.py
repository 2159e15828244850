"""Serves a planned job on the local engine or a hosted alias and prices what that cost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson

from local_engine import Completion, GenerationRequest, LocalBackend, StreamDelta
from router.errors import (
    LocalOutputInvalidError,
    LocalUnavailableError,
    UpstreamError,
)
from router.hosted import Attempt, HostedClient, HostedResult, answer_usage, parse_chunk
from router.job import Job, Outcome, Plan, Route, for_escalation, note_dropped
from router.pricing import Pricing
from router.streams import (
    LocalChunks,
    add_unfinished,
    close_unfinished,
    completed_chunks,
    completion_body,
    gathered_or_cancelled,
    merged,
    note_spent,
    primed,
)
from router.transport import StreamBroken, is_error_event, stream_error
from router.usage import (
    TokenEstimator,
    believable,
    counted,
    delta_text,
    prompt_cache_of,
    usage_is_invalid,
    usage_of,
)
from router.verifiers import Draft, ResponseFormatVerifier


def choice_seed(seed: int | None, index: int) -> int | None:
    """Choice i of a seeded n > 1 request is seeded seed + i (wrapped to int64), so the choices differ
    and the request stays repeatable; choice 0 keeps the request's own seed."""
    if seed is None or index == 0:
        return seed
    return (seed + index + 2**63) % 2**64 - 2**63


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
        self._tokens = TokenEstimator()

    @property
    def local(self) -> LocalBackend:
        if self._local is None:
            raise LocalUnavailableError("the local model is not loaded on this gateway")
        return self._local

    def generation_request(self, job: Job, plan: Plan, choice: int = 0) -> GenerationRequest:
        cap = min(job.max_tokens or self._local_max_tokens, plan.max_local_tokens or self._local_max_tokens)
        return GenerationRequest(request_id=job.request_id, messages=job.messages, max_tokens=cap,
                                 temperature=job.temperature, stop=job.stop, seed=choice_seed(job.seed, choice),
                                 top_p=job.top_p, options=job.sampling)

    def local_outcome(self, completion: Completion | Sequence[Completion], route: Route = Route.LOCAL) -> Outcome:
        """Ledger figures for a local answer (all its choices: the prompt counted once, as OpenAI bills n),
        with the all-hosted reference price."""
        completions = [completion] if isinstance(completion, Completion) else list(completion)
        first = completions[0]
        detail: dict[str, Any] = {"confidence": first.confidence.as_dict()}
        if len(completions) > 1:
            detail["choices"] = len(completions)
            detail["choice_confidence"] = [c.confidence.as_dict() for c in completions]
        if any(c.usage_estimated for c in completions):  # as a hosted answer without usage is marked
            detail["usage_estimated"] = True
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
        if plan.cascade_target:
            outcome = await self.run_hosted(for_escalation(job), plan.alias)
            note_dropped(outcome.detail, job)
            return outcome
        return await self.run_hosted(job, plan.alias)

    async def _checked_local_answer(self, job: Job, plan: Plan) -> tuple[list[Completion], Outcome]:
        """Every choice, generated whole, and its ledger figures; LocalOutputInvalidError (carrying the cost)
        when a choice does not match the request's JSON `response_format`."""
        completions = await self.local_choices(job, plan)
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

    async def local_choices(self, job: Job, plan: Plan) -> list[Completion]:
        """Every choice's completion. A caller cancelled meanwhile (its client gone), or a model server
        failing midway, leaves on the error an outcome with what the choices used so far: device time spent
        is billed, as a stream's is."""
        progress: dict[int, StreamDelta] = {}
        done: dict[int, Completion] = {}
        try:
            if job.n == 1:
                return [await self._generate(self.generation_request(job, plan), 0, progress, done)]
            # One choice failing (e.g. the queue is full) cancels the others.
            return await gathered_or_cancelled([asyncio.create_task(self._generate(
                self.generation_request(job, plan, i), i, progress, done)) for i in range(job.n)])
        except (asyncio.CancelledError, Exception) as exc:
            if isinstance(exc, asyncio.CancelledError) or progress or done:  # else nothing was used
                outcome = (self.local_outcome([done[i] for i in sorted(done)]) if done
                           else Outcome(route=Route.LOCAL, provider_model=self.local.model_name))
                add_unfinished(outcome, [d for i, d in progress.items() if i not in done])
                exc.outcome = outcome  # type: ignore[union-attr]  # read by the pipeline, as any failure's
            raise

    async def _generate(self, request: GenerationRequest, index: int, progress: dict[int, StreamDelta],
                        done: dict[int, Completion]) -> Completion:
        """The backend's whole completion, through its stream, keeping each canvas's running figures."""
        stream = self.local.stream(request)
        try:
            async for event in stream:
                if isinstance(event, Completion):
                    done[index] = event
                    return event
                progress[index] = event
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
            if index not in done:
                note_spent(stream, index, progress)
        raise LocalUnavailableError("the local model ended the request without a result")

    async def run_hosted(self, job: Job, alias: str) -> Outcome:
        """Serves a job at a hosted alias (with its retries and fallbacks). Cancelled meanwhile (its client
        gone), the CancelledError carries what the upstream bills for it, as the local route's does."""
        attempts: list[Attempt] = []
        try:
            result = await self._hosted.complete(alias, job.upstream_body, attempts)
        except (asyncio.CancelledError, UpstreamError) as exc:  # attempts billed though unusable: on the row
            await self._carry_abandoned(exc, job, attempts)
            raise
        outcome = await self._answered_outcome(job, result)
        if any(a.billed for a in attempts):  # earlier attempts the provider charged though they were unusable
            outcome.add_billed_attempts(await self.abandoned_outcome(job, attempts))
        return outcome

    async def _answered_outcome(self, job: Job, result: HostedResult) -> Outcome:
        """The ledger figures of a hosted answer: its usage as reported, else counted here."""
        detail: dict[str, Any] = {}
        (prompt_tokens, completion_tokens), estimated = await answer_usage(self._tokens, result, job.messages)
        if estimated:
            detail["usage_estimated"] = True
            if result.body.get("usage") is not None:  # sent, and not believed
                detail["upstream_usage_invalid"] = True
        cached, written = (0, 0) if estimated else prompt_cache_of(result.body)
        cost = self._pricing.hosted_cost(result.model, prompt_tokens, completion_tokens, cached, written)
        return Outcome(route=Route.HOSTED, provider_model=result.model.model, prompt_tokens=prompt_tokens,
                       completion_tokens=completion_tokens, cached_tokens=cached, cache_write_tokens=written,
                       hosted_cost_usd=cost, unpriced=cost is None,
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
            streams: list[AsyncIterator[StreamDelta | Completion]] = []
            try:
                for i in range(job.n):
                    streams.append(self.local.stream(self.generation_request(job, plan, i)))
                streams = await primed(streams)
            except BaseException as exc:
                # A client gone before the first byte (its rows queued, or in a first canvas) is billed the passes
                # its rows had, as a non-streaming request is; so is a failure after some rows computed.
                unfinished = await close_unfinished(streams, {})
                if isinstance(exc, asyncio.CancelledError) or unfinished:
                    add_unfinished(outcome, unfinished)
                    exc.outcome = outcome  # type: ignore[attr-defined]  # read by the pipeline
                raise
            return ChunkStream(outcome, self._local_chunks(job, streams, outcome))
        if plan.cascade_target:
            target = await self.stream_hosted(for_escalation(job), plan.alias)
            note_dropped(target.outcome.detail, job)
            return target
        return await self.stream_hosted(job, plan.alias)

    async def abandoned_outcome(self, job: Job, attempts: Sequence[Attempt]) -> Outcome:
        """What hosted attempts without a usable answer cost: each the provider bills (one abandoned in flight
        when its client left, a 200 whose body was broken) is charged at least its prompt, counted here as for
        a stream without usage (`usage_estimated`); one left between attempts (a backoff), or failed with an
        error status, costs nothing."""
        return Outcome.unanswered(attempts, await self._pricing.unanswered_bills(
            attempts, lambda model: counted(self._tokens.prompt_tokens, model, job.messages)))

    async def _carry_abandoned(self, exc: BaseException, job: Job, attempts: Sequence[Attempt]) -> None:
        """Puts the attempts and what they cost on the error: its row lists them, and `/metrics` counts them, as a
        served request's (a request every upstream failed had only their number: an outage showed no failed calls)."""
        if isinstance(exc, asyncio.CancelledError) or attempts:
            exc.outcome = await self.abandoned_outcome(job, attempts)  # type: ignore[attr-defined]

    async def stream_hosted(self, job: Job, alias: str) -> ChunkStream:
        """Opens a hosted stream; cancelled before the upstream's first byte, as `run_hosted`."""
        attempts: list[Attempt] = []
        try:
            opened = await self._hosted.stream(alias, job.upstream_body, attempts)
        except (asyncio.CancelledError, UpstreamError) as exc:  # as `run_hosted`: timeouts waiting for headers
            await self._carry_abandoned(exc, job, attempts)
            raise
        outcome = Outcome(route=Route.HOSTED, provider_model=opened.model.model,
                          attempts=[a.as_dict() for a in opened.attempts])
        # earlier attempts the provider charged though unusable (timed out waiting for headers): on the row, as
        # `run_hosted` puts them (the stream's row had only the answer's bill)
        billed = await self.abandoned_outcome(job, attempts) if any(a.billed for a in attempts) else None
        return ChunkStream(outcome, self._hosted_chunks(job, opened, outcome, billed))

    async def _hosted_chunks(self, job: Job, opened: Any, outcome: Outcome,
                             billed: Outcome | None = None) -> AsyncIterator[bytes]:
        reported = False
        answer: list[str] = []  # the text relayed so far: what a stream without usage is billed on
        last: dict[str, Any] = {}
        choices: dict[int, bool] = {}  # each choice seen: whether it has its finish_reason yet
        held: bytes | None = None  # the upstream's usage chunk, relayed once the answer shows it believable
        try:
            async for payload in opened.lines():
                try:
                    chunk = parse_chunk(payload)
                except ValueError as exc:  # relayed as is, it would break the client's SDK mid-stream
                    raise StreamBroken(f"upstream {opened.model.alias} sent a malformed stream chunk",
                                       retryable=False, error_type="stream_interrupted") from exc
                if is_error_event(chunk):  # relayed, it is no chunk; the row would lose the upstream's message
                    raise stream_error(payload, opened.model)
                last = chunk
                _note_finished(chunk, choices)
                answer.append(delta_text(chunk))
                usage = usage_of(chunk)
                if usage is not None:
                    outcome.prompt_tokens, outcome.completion_tokens = usage
                    outcome.cached_tokens, outcome.cache_write_tokens = prompt_cache_of(chunk)
                    reported = True
                    if not chunk.get("choices"):
                        held = payload if job.wants_usage else None
                        continue
                elif usage_is_invalid(chunk):  # counted here instead; a usage-only chunk is replaced by that count
                    outcome.detail["upstream_usage_invalid"] = True
                    if not chunk.get("choices"):
                        continue
                yield payload
            if not choices or not all(choices.values()):
                if not (choices and opened.done):  # the body ended early (a proxy timing it out, say)
                    raise StreamBroken(f"upstream {opened.model.alias} ended its stream before its answer finished",
                                       retryable=False, error_type="stream_interrupted")
                outcome.detail["upstream_no_finish_reason"] = True  # `[DONE]` says whole: a quirk, not a cut
            if reported and not believable((outcome.prompt_tokens, outcome.completion_tokens), "".join(answer)):
                outcome.detail["upstream_usage_invalid"], reported = True, False  # estimated below: caches zeroed
            if reported and held is not None:
                yield held
            if not reported:  # the upstream sent no usage: estimated here (off the loop), and the client that
                # asked for a usage chunk still gets one, as the ledger's figures
                outcome.prompt_tokens, outcome.completion_tokens = await asyncio.to_thread(
                    self._tokens.usage, opened.model.model, job.messages, answer)
                outcome.detail["usage_estimated"] = reported = True
                if job.wants_usage:
                    yield orjson.dumps({
                        "id": last.get("id"), "object": "chat.completion.chunk", "created": last.get("created"),
                        "model": last.get("model"), "choices": [], "usage": {
                            "prompt_tokens": outcome.prompt_tokens, "completion_tokens": outcome.completion_tokens,
                            "total_tokens": outcome.prompt_tokens + outcome.completion_tokens}})
        finally:
            await opened.aclose()
            if not reported:  # no usage chunk and cut short (an upstream stream broken, a client gone)
                outcome.prompt_tokens, outcome.completion_tokens = await counted(
                    self._tokens.usage, opened.model.model, job.messages, answer)
                outcome.detail["usage_estimated"] = True
            if outcome.detail.get("usage_estimated"):
                # counted here: what the provider's cache served or stored is not known
                outcome.cached_tokens = outcome.cache_write_tokens = 0
            # added, not set: an escalation's outcome already holds its judges' hosted bills
            outcome.add_hosted_cost(self._pricing.hosted_cost(opened.model, outcome.prompt_tokens,
                                                              outcome.completion_tokens, outcome.cached_tokens,
                                                              outcome.cache_write_tokens))
            if billed is not None:
                outcome.add_billed_attempts(billed)

    async def _local_chunks(self, job: Job, streams: list[AsyncIterator[StreamDelta | Completion]],
                            outcome: Outcome) -> AsyncIterator[bytes]:
        chunks = LocalChunks(job, self.local_alias)
        finished: dict[int, Completion] = {}
        progress: dict[int, StreamDelta] = {}  # each unfinished choice's latest figures
        try:
            for index in range(len(streams)):
                yield chunks.choice(index, {"role": "assistant", "content": ""})
            async for index, event in merged(streams):
                if isinstance(event, StreamDelta):
                    progress[index] = event
                    if event.text or event.logprobs:
                        yield chunks.choice(index, {"content": event.text}, logprobs=event.logprobs)
                    continue
                finished[index] = event  # the ledger has each choice's cost as soon as it is done
                final = self.local_outcome([finished[i] for i in sorted(finished)])
                outcome.__dict__.update({k: v for k, v in final.__dict__.items() if k != "body"})
                yield chunks.choice(index, {}, event.finish_reason, draftgate={"confidence": event.confidence.as_dict()})
            if job.wants_usage:
                yield chunks.usage([finished[i] for i in sorted(finished)])
        finally:  # a client gone before the first event too: rows still cancelled, and billed what they used
            add_unfinished(outcome, await close_unfinished(streams, progress, finished))


def _note_finished(chunk: dict[str, Any], choices: dict[int, bool]) -> None:
    """Records which choices a chunk carries and which of them it finishes."""
    for choice in chunk.get("choices") or ():
        if isinstance(choice, dict):
            index = choice.get("index")
            index = index if isinstance(index, int) else 0
            choices[index] = choices.get(index, False) or bool(choice.get("finish_reason"))
