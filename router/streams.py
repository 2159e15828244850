"""Chunk streams for local answers: OpenAI chunk bytes, and merging and priming the engine's streams."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Collection, Sequence
from typing import Any, TypeVar

import orjson

from local_engine import Completion, GenerationFailedError, MeteredStream, StreamDelta, TokenLogprob
from router.job import Job, Outcome

T = TypeVar("T")


def usage_dict(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    """OpenAI's usage object; `cached_tokens` are prompt tokens served from the engine's prefix cache."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def logprobs_object(tokens: Sequence[TokenLogprob] | None) -> dict[str, Any] | None:
    """OpenAI's `choices[i].logprobs` for these tokens; None (as OpenAI sends) when none were asked for."""
    return None if tokens is None else {"content": list(tokens), "refusal": None}


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
                     "logprobs": logprobs_object(c.logprobs), "finish_reason": c.finish_reason}
                    for i, c in enumerate(completions)],
        "usage": usage_dict(first.prompt_tokens, sum(c.completion_tokens for c in completions),
                            first.cached_tokens),
        "draftgate": extension,
    }


class LocalChunks:
    """OpenAI chunk bytes for one local answer, with the id, time and model all its chunks share."""

    def __init__(self, job: Job, model: str) -> None:
        self._base = {"id": f"chatcmpl-{job.request_id}", "object": "chat.completion.chunk",
                      "created": int(time.time()), "model": model, "system_fingerprint": None}
        self._usage_field = {"usage": None} if job.wants_usage else {}  # in every chunk once usage is asked for

    def choice(self, index: int, delta: dict[str, Any], finish: str | None = None,
               logprobs: Sequence[TokenLogprob] | None = None, **more: Any) -> bytes:
        return orjson.dumps({**self._base, "choices": [{"index": index, "delta": delta,
                                                        "logprobs": logprobs_object(logprobs),
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
        if completion.text or completion.logprobs:
            yield chunks.choice(index, {"content": completion.text}, logprobs=completion.logprobs)
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

    def spent(self) -> StreamDelta | None:
        """What the stream's request has used so far, when its backend says (`MeteredStream`)."""
        return self._stream.spent() if isinstance(self._stream, MeteredStream) else None


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


def note_spent(stream: AsyncIterator[StreamDelta | Completion], index: int,
               progress: dict[int, StreamDelta]) -> None:
    """An unfinished choice's figures from its backend when they are newer than its last canvas's: the
    passes of a canvas never finished (a client gone after 0.1 s of a 0.3 s canvas) were spent too."""
    spent = stream.spent() if isinstance(stream, MeteredStream) else None
    last = progress.get(index)
    if spent is not None and spent.device_seconds > (last.device_seconds if last else 0.0):
        progress[index] = spent


async def close_unfinished(streams: Sequence[AsyncIterator[StreamDelta | Completion]], progress: dict[int, StreamDelta],
                           finished: Collection[int] = ()) -> list[StreamDelta]:
    """Closes every choice's stream (its rows cancelled) and returns what the unfinished ones used: their last
    canvas's figures, or newer ones from the backend (`note_spent`)."""
    for index, stream in enumerate(streams):
        await stream.aclose()  # type: ignore[attr-defined]
        if index not in finished:
            note_spent(stream, index, progress)
    return [delta for index, delta in progress.items() if index not in finished]


def add_unfinished(outcome: Outcome, deltas: Sequence[StreamDelta]) -> None:
    """Adds what choices left unfinished (a client gone mid-stream) used up to their last canvas: their
    device time is spent and billed like a finished answer's, never a silent $0."""
    if not deltas:
        return
    outcome.prompt_tokens = outcome.prompt_tokens or max(d.prompt_tokens for d in deltas)  # once, as for n
    outcome.completion_tokens += sum(d.completion_tokens for d in deltas)
    outcome.device_seconds += sum(d.device_seconds for d in deltas)
    outcome.local_cost_usd = (outcome.local_cost_usd or 0.0) + sum(d.cost_usd for d in deltas)
    outcome.detail["unfinished_choices"] = len(deltas)
    if any(d.usage_estimated for d in deltas):
        outcome.detail["usage_estimated"] = True
