"""The in-process DiffusionGemma engine: a bounded queue and a step-level scheduler in a worker thread.

Scheduling is per denoising step, not per `generate()` call: one running batch (`local_engine/batch.py`)
holds every active request, and each scheduler tick does, in order: drop finished or cancelled rows;
encode the committed canvases of the rows that go on (each row crosses its own canvas boundary); admit
waiting requests into the running batch (one encoder pass for their prompts, then they share every
decoder pass); one batched decoder pass with a vectorised denoising step. An idle engine admits a
request the moment it arrives.

Submitting never stalls the event loop: a prompt longer than a few thousand characters is rendered and
tokenized in a small thread pool of the engine's own (`_prepare`, `local_engine/prompts.py`).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from local_engine.batch import Batch, BatchStats
from local_engine.detokenize import Detokenizer
from local_engine.errors import (
    EngineUnavailableError,
    GenerationFailedError,
    QueueFullError,
)
from local_engine.interface import (
    PLAIN_SAMPLING,
    Completion,
    EngineConfig,
    GenerationRequest,
    LocalCapabilities,
    StreamDelta,
)
from local_engine.loading import LoadedModel, context_window, load_model, sampling_of
from local_engine.metering import Meter, default_rate
from local_engine.output import CanvasOutput, Emit
from local_engine.prefix import PrefixCache
from local_engine.prompts import PromptBuilder, flatten, message_text
from local_engine.rows import Row, RowState
from local_engine.submission import RowEvents, abandon, retrieved, submitted_row

ADMISSIONS_KEPT = 1024  # recent admissions kept for tests and benchmarks; bounded, the engine runs for months
# Prompts up to this many characters (of at most INLINE_PROMPT_MESSAGES messages) are prepared on the event loop:
# a millisecond or two, less than the hop to a thread costs a typical request. Longer ones go to PROMPT_WORKERS
# threads of the engine's own, not the loop's default executor, which auth and the ledger share.
INLINE_PROMPT_CHARS = 2048
INLINE_PROMPT_MESSAGES = 32
PROMPT_WORKERS = 2


@dataclass(frozen=True)
class Admission:
    """When a request joined the running batch."""

    tick: int  # the scheduler tick it was admitted on
    joined_with: int  # rows already running when it joined


class _Slot:
    """A row plus the callback that delivers its events to the event loop."""

    def __init__(self, row: Row, emit: Emit) -> None:
        self.row = row
        self.emit = emit


class DiffusionEngine:
    """A LocalBackend running DiffusionGemma in this process."""

    capabilities: ClassVar[LocalCapabilities] = PLAIN_SAMPLING  # generate() has no logprobs, penalties, top_k

    def __init__(self, loaded: LoadedModel, config: EngineConfig) -> None:
        self._loaded = loaded
        self._config = config
        self.model_name = loaded.name
        self._admitting = 0  # rows the worker has taken off the queue and is encoding into the batch
        self.context_length: int | None = context_window(loaded.model.config, config.max_model_len)
        self.sampling = sampling_of(loaded, config.first_canvas_length)
        rate = config.device_usd_per_hour if config.device_usd_per_hour is not None else default_rate(loaded.device)
        self.meter = Meter(loaded.device, rate)
        self._waiting: queue.Queue[_Slot] = queue.Queue()
        self._arrived = threading.Event()  # set on every submit: wakes an idle worker at once
        self.prefixes = PrefixCache(config.prefix_cache_tokens, config.prefix_cache_min_tokens)
        self._batch = Batch(loaded.model, self.sampling, self.meter, loaded.device, self.prefixes)
        self._running = False
        self._thread: threading.Thread | None = None
        self.ticks = 0  # scheduler ticks, for tests and benchmarks
        self.admissions: dict[str, Admission] = {}  # request id -> its admission, the newest ADMISSIONS_KEPT
        self.prompts = PromptBuilder(loaded.tokenizer, self.prefixes)
        self._output = CanvasOutput(Detokenizer(loaded.tokenizer), self.meter, self.model_name)
        self.inline_prompt_chars = INLINE_PROMPT_CHARS
        self._preparing = 0  # submissions whose prompt is being prepared off the loop: they hold queue places
        self._prompt_pool: ThreadPoolExecutor | None = None

    @classmethod
    def load(cls, config: EngineConfig) -> DiffusionEngine:
        return cls(load_model(config), config)

    async def start(self) -> None:
        if self._prompt_pool is None:
            self._prompt_pool = ThreadPoolExecutor(PROMPT_WORKERS, thread_name_prefix="draftgate-prompt")
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="draftgate-engine", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Stops taking work; queued and running requests fail cleanly with EngineUnavailableError."""
        self._running = False
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)
            self._thread = None
        error = EngineUnavailableError("the local engine is shutting down")
        members = self._batch.members
        self._batch.clear()
        for slot in members:
            slot.emit(error)
        while not self._waiting.empty():
            self._waiting.get_nowait().emit(error)
        if self._prompt_pool is not None:  # a prompt still being prepared finds the engine stopped and fails
            self._prompt_pool.shutdown(wait=False)
            self._prompt_pool = None

    async def is_ready(self) -> bool:
        return self._running and self._thread is not None and self._thread.is_alive()

    def count_prompt_tokens(self, messages: Sequence[Mapping[str, Any]]) -> int:
        return len(self._prompt_ids(messages))

    def _prompt_ids(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        return self._render(messages, generation_prompt=True)

    def _render(self, messages: Sequence[Mapping[str, Any]], generation_prompt: bool) -> list[int]:
        return self.prompts.tokenize(self.prompts.text(flatten(messages), generation_prompt))

    def _prefix_cuts(self, messages: Sequence[Mapping[str, Any]], ids: list[int]) -> tuple[int, ...]:
        return self.prompts.cuts(flatten(messages), ids)

    def _prepare(self, messages: Sequence[Mapping[str, Any]]) -> tuple[list[int], tuple[int, ...]]:
        """Token ids and prefix cuts, or ContextLengthError: on the loop for a short prompt, else in a thread."""
        return self.prompts.prepare(messages, self.context_length)

    # -- the event-loop side ------------------------------------------------------------------------------

    def _inline(self, messages: Sequence[Mapping[str, Any]]) -> bool:
        """Whether a prompt is short enough to prepare on the event loop (cheaper than a thread hop)."""
        if len(messages) > INLINE_PROMPT_MESSAGES:
            return False
        return sum(len(message_text(m)) for m in messages) <= self.inline_prompt_chars

    def _reserve(self) -> None:
        """Refuses a submission the engine cannot take; else holds it a queue place. Prompts still being
        prepared count as queued, so `max_queue` bounds them too. Free places in the running batch count as
        room: arrivals join it at the next tick, so a burst onto an idle engine is not refused while it is
        empty (read from the event loop without the worker's lock: at worst one tick stale)."""
        if not self._running:
            raise EngineUnavailableError("the local engine is not running")
        queued = self._queued() + self._preparing
        free = max(0, self._config.max_batch_size - len(self._batch.members) - self._admitting)
        if queued >= self._config.max_queue + free:
            raise QueueFullError(retry_after_s=self._retry_after(queued), queued=queued)

    def _queued(self) -> int:
        """Rows waiting for the batch whose callers still want them. A caller that left (an SDK's timeout) leaves
        its row in the queue until the worker has room to take it off: it holds no place meanwhile, as vLLM
        drops an aborted request from its waiting queue at once."""
        with self._waiting.mutex:  # queue.Queue's own lock: the worker takes rows off concurrently
            return sum(not slot.row.cancelled for slot in self._waiting.queue)

    def _submit(self, request: GenerationRequest, emit: Emit) -> Row:
        """Submits a short prompt at once, on the event loop."""
        self._reserve()
        return self._enqueue(request, emit, *self._prepare(request.messages))

    async def _submit_off_loop(self, request: GenerationRequest, emit: Emit, release: Callable[[], None]) -> Row:
        """Submits a long prompt once a pool thread has prepared it. Its queue place is held from
        `stream()` on and given back by `release`; a caller cancelled meanwhile cancels this, and no row is
        queued."""
        try:
            if not self._running or self._prompt_pool is None:
                raise EngineUnavailableError("the local engine is shutting down")
            loop = asyncio.get_running_loop()
            ids, cuts = await loop.run_in_executor(self._prompt_pool, self._prepare, request.messages)
        finally:
            release()
        if not self._running:  # stopped while it was prepared: stop() already failed every queued row
            raise EngineUnavailableError("the local engine is shutting down")
        return self._enqueue(request, emit, ids, cuts)

    def _enqueue(self, request: GenerationRequest, emit: Emit, ids: list[int], cuts: tuple[int, ...]) -> Row:
        generator = None
        scale = 1.0 if request.temperature is None else request.temperature
        # Temperature 0 is greedy, but the canvas starts from, and is renoised with, random tokens: seeded
        # (0 unless the request gives one) so the same request gets the same answer, as users of greedy expect.
        seed = 0 if request.seed is None and scale == 0 else request.seed
        if seed is not None:  # on the model's device, so no draw copies a distribution to the host
            generator = torch.Generator(device=self._loaded.device).manual_seed(seed)
        cap = min(request.max_tokens or self._config.max_tokens, self._config.max_tokens)
        if self.context_length is not None:  # an answer ends where the context does (finish_reason "length")
            cap = min(cap, self.context_length - len(ids))
        row = Row(request=request, prompt_ids=ids, max_tokens=cap, generator=generator, temperature_scale=scale,
                  prefix_cuts=cuts)
        self._waiting.put(_Slot(row, emit))
        self._arrived.set()
        return row

    def _retry_after(self, queued: int) -> float:
        # A rough drain time: a queue of N waits about N / batch of the typical request latency (~1 s).
        return max(1.0, queued / max(1, self._config.max_batch_size))

    def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta | Completion]:
        """Deltas per finished canvas, then the Completion; closing the iterator cancels the row.

        Submits at once, so a stopped engine or a full queue raises here, before any byte is streamed; a
        long prompt is prepared off the loop meanwhile, and its ContextLengthError comes with the first event.
        """
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[StreamDelta | Completion | BaseException] = asyncio.Queue()

        def emit(event: StreamDelta | Completion | BaseException) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the loop is gone (shutdown): nobody is listening any more
                pass

        if self._inline(request.messages):
            row = self._submit(request, emit)
            return RowEvents(self._events(row, events), lambda: setattr(row, "cancelled", True),
                             lambda: self._spent(row))
        self._reserve()
        self._preparing += 1
        held = [True]

        def release(_: object = None) -> None:  # once, whichever comes first
            if held[0]:
                held[0] = False
                self._preparing -= 1

        submitted = loop.create_task(self._submit_off_loop(request, emit, release))
        submitted.add_done_callback(retrieved)
        # A task cancelled before it ever ran (its stream closed at once: a request's earlier choices when a
        # later one is refused) never enters its `finally`: its place would be held for the engine's life.
        submitted.add_done_callback(release)
        return RowEvents(self._events(submitted, events), lambda: abandon(submitted),
                         lambda: self._spent(submitted_row(submitted)))

    def _spent(self, row: Row | None) -> StreamDelta | None:
        """A row's running figures (read from the loop while the engine thread may still add its current
        pass: a client that leaves mid-pass is billed up to the last whole pass)."""
        if row is None:
            return None
        seconds = row.device_seconds[0]
        return StreamDelta("", prompt_tokens=len(row.prompt_ids), completion_tokens=len(row.tokens),
                           device_seconds=seconds, cost_usd=self.meter.cost_usd(seconds))

    async def _events(self, submitted: Row | asyncio.Task[Row],
                      events: asyncio.Queue[StreamDelta | Completion | BaseException],
                      ) -> AsyncIterator[StreamDelta | Completion]:
        row: Row | None = None
        try:
            row = submitted if isinstance(submitted, Row) else await submitted
            while True:
                event = await events.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if isinstance(event, Completion):
                    return
        finally:
            if row is not None:
                row.cancelled = True  # harmless once finished; frees the slot at the next tick otherwise
            elif isinstance(submitted, asyncio.Task):
                abandon(submitted)

    async def generate(self, request: GenerationRequest) -> Completion:
        """The whole completion; cancelling the awaiting task cancels the row."""
        stream = self.stream(request)
        try:
            async for event in stream:
                if isinstance(event, Completion):
                    return event
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        raise GenerationFailedError("the engine ended the request without a result")

    # -- the worker-thread side ---------------------------------------------------------------------------

    @property
    def stats(self) -> BatchStats:
        """What the running batch computed: passes, rows per pass, joins, canvas boundaries."""
        return self._batch.stats

    @property
    def _active(self) -> list[_Slot]:
        return list(self._batch.members)

    def _loop(self) -> None:
        if self._config.threads:  # torch's CPU thread count is per thread: set it where the model runs
            torch.set_num_threads(self._config.threads)
        with torch.inference_mode():
            while self._running:
                if not self._batch.members and self._waiting.empty():
                    self._arrived.wait(0.05)  # idle: no fixed join wait, a submit wakes this at once
                    self._arrived.clear()
                    continue
                self.ticks += 1
                self._tick()

    def _tick(self) -> None:
        batch = self._batch
        try:
            self._schedule(batch)
        except Exception as exc:  # noqa: BLE001 - a failed batched pass fails its batch, not the engine
            members = batch.members
            batch.clear()  # before anyone hears of the failure
            self._fail(members, exc)

    def _schedule(self, batch: Batch) -> None:
        """One tick's work, in order (the policy a benchmark may replace; failures are `_tick`'s)."""
        batch.drop()
        batch.boundary()  # rows that finished a canvas and go on open their next one
        self._admit()
        if any(r.state is RowState.DENOISING for r in batch.rows):
            batch.step(self._converged)
        batch.drop()

    def _admit(self) -> None:
        room = self._config.max_batch_size - len(self._batch.members)
        joining: list[_Slot] = []
        while len(joining) < room:
            try:
                slot = self._waiting.get_nowait()
            except queue.Empty:
                break
            if not slot.row.cancelled:
                self._note_admission(slot.row.request.request_id)
                joining.append(slot)
                self._admitting += 1  # off the queue, not yet a member: still no room for another
        if not joining:
            return
        try:
            self._batch.admit(joining)
        except Exception as exc:  # noqa: BLE001 - arrivals that cannot be encoded fail alone
            self._fail(joining, exc)
        finally:
            self._admitting = 0

    def _note_admission(self, request_id: str) -> None:
        self.admissions[request_id] = Admission(self.ticks, len(self._batch.members))
        if len(self.admissions) > ADMISSIONS_KEPT:
            del self.admissions[next(iter(self.admissions))]  # dicts keep insertion order: the oldest

    @staticmethod
    def _fail(slots: Sequence[_Slot], exc: Exception) -> None:
        for slot in slots:
            slot.row.state = RowState.DONE
            slot.emit(GenerationFailedError(f"{type(exc).__name__}: {exc}"))

    def _converged(self, slot: _Slot) -> None:
        try:
            self._finish_canvas(slot)
        except Exception as exc:  # noqa: BLE001 - one failing request must not take the batch down
            self._fail([slot], exc)

    def _finish_canvas(self, slot: _Slot) -> None:
        self._output.finish_canvas(slot.row, slot.emit)
