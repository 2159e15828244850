"""Submitting a request never stalls the event loop: a large prompt is rendered and tokenized in a worker
thread, and one whose length in characters proves it cannot fit is refused without being tokenized. The
queue bound, cancellation, shutdown and the prompt's token ids are the same as on the inline path."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from local_engine import (
    Completion,
    ContextLengthError,
    EngineUnavailableError,
    GenerationRequest,
    QueueFullError,
)
from local_engine.engine import DiffusionEngine

MSG = [{"role": "user", "content": "What is 2 + 2?"}]
HUGE = [{"role": "user", "content": "word " * 200_000}]  # 1 MB: ~1M tokens, seconds of tokenizing on this model


def req(rid: str, messages: Sequence[Mapping[str, Any]] = MSG, **kw: Any) -> GenerationRequest:
    return GenerationRequest(request_id=rid, messages=messages, max_tokens=kw.pop("max_tokens", 8),
                             seed=kw.pop("seed", 1), **kw)


class GatedEngine(DiffusionEngine):
    """Holds every off-loop prompt preparation until the test opens the gate."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.entered = threading.Event()
        self.gate = threading.Event()

    def _prepare(self, messages: Sequence[Mapping[str, Any]]) -> tuple[list[int], tuple[int, ...]]:
        self.entered.set()
        assert self.gate.wait(10)
        return super()._prepare(messages)

    def release(self) -> None:
        """Opens the gate (the shared fixture calls this before it stops the engine)."""
        self.gate.set()


async def _until(condition: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the engine"
        await asyncio.sleep(0.005)


async def test_a_huge_prompt_is_tokenized_off_the_event_loop(engine_factory: Any) -> None:
    engine = await engine_factory()
    await engine.generate(req("warm", max_tokens=4))  # first-use costs (template compile, first pass) go first
    stop = asyncio.Event()

    async def ticker() -> float:
        worst, last = 0.0, time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            worst, last = max(worst, now - last), now
        return worst

    gc.disable()  # a full collection pauses every thread (~0.25 s here); that is not what this measures
    try:
        ticks = asyncio.create_task(ticker())
        await asyncio.sleep(0.05)
        started = time.perf_counter()
        huge = asyncio.create_task(engine.generate(req("huge", HUGE)))
        refused: list[float] = []
        huge.add_done_callback(lambda _: refused.append(time.perf_counter() - started))
        small = await engine.generate(req("small", max_tokens=4))  # served while the huge prompt is tokenized
        small_at = time.perf_counter() - started
        with pytest.raises(ContextLengthError) as info:
            await huge
        elapsed = refused[0]
        stop.set()
        worst = await ticks
    finally:
        gc.enable()
    assert isinstance(small, Completion) and small_at < elapsed
    # The exact count, as before: nothing but the place the work runs changed.
    assert info.value.prompt_tokens > 1_000_000
    assert f"these messages are {info.value.prompt_tokens};" in str(info.value)
    # The old engine tokenized on the loop: its longest stall was the whole tokenization (seconds).
    assert worst < 0.5 and worst < elapsed / 2, f"loop stalled {worst:.2f}s of {elapsed:.2f}s"


async def test_off_loop_submission_gives_the_same_tokens_and_answers(engine_factory: Any) -> None:
    inline = await engine_factory(prefix_cache_min_tokens=8)
    threaded = await engine_factory(prefix_cache_min_tokens=8)
    threaded.inline_prompt_chars = 0  # every prompt goes through the worker thread
    chat = [{"role": "system", "content": "Be brief and polite with the user."}, *MSG]
    answers = []
    for engine in (inline, threaded):
        got = [await engine.generate(req(f"r{i}", chat, seed=i, max_tokens=12)) for i in range(3)]
        answers.append([(c.text, c.prompt_tokens, c.cached_tokens) for c in got])
    assert answers[0] == answers[1] and answers[0][0][1] == inline.count_prompt_tokens(chat)
    assert answers[1][2][2] > 0  # the system prompt was found as a prefix on the threaded path too


async def test_a_caller_cancelled_while_its_prompt_is_tokenized_leaves_nothing_queued(engine_factory: Any) -> None:
    engine = await engine_factory(GatedEngine)
    engine.inline_prompt_chars = 0
    task = asyncio.create_task(engine.generate(req("gone")))
    await _until(engine.entered.is_set)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    engine.gate.set()  # the worker thread finishes tokenizing; nobody wants the row any more
    await asyncio.sleep(0.2)
    assert engine._waiting.empty() and "gone" not in engine.admissions and engine._active == []
    assert isinstance(await engine.generate(req("next")), Completion)


async def test_queue_full_counts_prompts_still_being_tokenized(engine_factory: Any) -> None:
    engine = await engine_factory(GatedEngine, max_batch_size=1, max_queue=2)
    engine.inline_prompt_chars = 0
    tasks = [asyncio.create_task(engine.generate(req(f"q{i}", seed=i))) for i in range(3)]
    await asyncio.sleep(0)  # all submitted: their prompts are being tokenized, none is queued yet
    assert engine._waiting.empty()
    with pytest.raises(QueueFullError) as info:  # the batch's one free place and the queue's two are taken
        engine.stream(req("extra"))  # refused at once, before any byte, as before
    assert info.value.queued == 3 and info.value.retry_after_s >= 1
    engine.gate.set()
    assert all(isinstance(c, Completion) for c in await asyncio.gather(*tasks))
    assert isinstance(await engine.generate(req("after")), Completion)  # the places were given back


async def test_a_prompt_tokenized_while_the_engine_stops_fails_cleanly(engine_factory: Any) -> None:
    engine = await engine_factory(GatedEngine)
    engine.inline_prompt_chars = 0
    task = asyncio.create_task(engine.generate(req("late")))
    await _until(engine.entered.is_set)
    stopping = asyncio.create_task(engine.stop())
    await asyncio.sleep(0.05)
    engine.gate.set()
    with pytest.raises(EngineUnavailableError):
        await task
    await stopping
    assert engine._waiting.empty() and "late" not in engine.admissions
