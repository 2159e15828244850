"""The in-process DiffusionGemma engine: a bounded queue and a step-level scheduler in a worker thread.

Scheduling is per denoising step, not per `generate()` call. Each tick admits waiting requests as a
new cohort (up to `max_batch_size` active rows in all), then advances every cohort by one unit of work:
rows of a cohort share one left-padded KV cache and one batched decoder pass per step. A row whose
canvas converged commits it at once; if it is finished (EOS, max_tokens, a stop string) it leaves the
batch immediately and is never computed again; no canvas is computed after EOS. Requests that arrive
while cohorts run start their own cohort at the next tick, interleaved with the running ones.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import torch

from local_engine.errors import EngineUnavailableError, GenerationFailedError, QueueFullError
from local_engine.interface import Completion, EngineConfig, GenerationRequest, StreamDelta
from local_engine.cohort import Cohort
from local_engine.loading import LoadedModel, load_model
from local_engine.metering import Meter, default_rate
from local_engine.rows import Row, RowState, Sampling

Emit = Callable[[StreamDelta | Completion | BaseException], None]


def message_text(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content or "")


def sampling_of(loaded: LoadedModel) -> Sampling:
    gen = loaded.model.generation_config
    sampler = getattr(gen, "sampler_config", None)
    bound = getattr(sampler, "entropy_bound", None) if sampler is not None else None
    return Sampling(canvas_length=loaded.model.config.canvas_length,
                    max_steps=int(getattr(gen, "max_denoising_steps", None) or 48),
                    t_min=float(getattr(gen, "t_min", None) or 0.4), t_max=float(getattr(gen, "t_max", None) or 0.8),
                    entropy_bound=float(bound if bound is not None else 0.1),
                    confidence_threshold=float(getattr(gen, "confidence_threshold", None) or 0.005),
                    vocab_size=loaded.model.config.text_config.vocab_size,
                    eos_id=int(gen.eos_token_id if gen.eos_token_id is not None else 1),
                    pad_id=int(gen.pad_token_id if gen.pad_token_id is not None else 0))


class _Slot:
    """A row plus the callback that delivers its events to the event loop."""

    def __init__(self, row: Row, emit: Emit) -> None:
        self.row = row
        self.emit = emit
        self.queued_at = time.monotonic()


class DiffusionEngine:
    """A LocalBackend running DiffusionGemma in this process."""

    def __init__(self, loaded: LoadedModel, config: EngineConfig) -> None:
        self._loaded = loaded
        self._config = config
        self.model_name = loaded.name
        self.sampling = sampling_of(loaded)
        rate = config.device_usd_per_hour if config.device_usd_per_hour is not None else default_rate(loaded.device)
        self.meter = Meter(loaded.device, rate)
        self._waiting: queue.Queue[_Slot] = queue.Queue()
        self._cohorts: list[Cohort] = []
        self._running = False
        self._thread: threading.Thread | None = None
        self.ticks = 0  # scheduler ticks, for tests and benchmarks
        self.admitted_at_tick: dict[str, int] = {}

    @classmethod
    def load(cls, config: EngineConfig) -> DiffusionEngine:
        return cls(load_model(config), config)

    async def start(self) -> None:
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
        for cohort in self._cohorts:
            for slot in cohort.members:
                slot.emit(error)
        self._cohorts.clear()
        while not self._waiting.empty():
            self._waiting.get_nowait().emit(error)

    def is_ready(self) -> bool:
        return self._running and self._thread is not None and self._thread.is_alive()

    def count_prompt_tokens(self, messages: Sequence[Mapping[str, Any]]) -> int:
        return len(self._prompt_ids(messages))

    def _prompt_ids(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        flat = [{"role": m.get("role", "user"), "content": message_text(m)} for m in messages]
        text = self._loaded.tokenizer.apply_chat_template(flat, add_generation_prompt=True, tokenize=False)
        ids: list[int] = self._loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids

    # -- the event-loop side ------------------------------------------------------------------------------

    def _submit(self, request: GenerationRequest, emit: Emit) -> Row:
        if not self._running:
            raise EngineUnavailableError("the local engine is not running")
        queued = self._waiting.qsize()
        if queued >= self._config.max_queue:
            raise QueueFullError(retry_after_s=self._retry_after(queued), queued=queued)
        seed = request.seed if request.seed is not None else torch.seed() % (2**63)
        scale = 1.0 if request.temperature is None else request.temperature
        cap = min(request.max_tokens or self._config.max_tokens, self._config.max_tokens)
        row = Row(request=request, prompt_ids=self._prompt_ids(request.messages), max_tokens=cap,
                  generator=torch.Generator().manual_seed(seed), temperature_scale=scale)
        self._waiting.put(_Slot(row, emit))
        return row

    def _retry_after(self, queued: int) -> float:
        # A rough drain time: a queue of N waits about N / batch of the typical request latency (~1 s).
        return max(1.0, queued / max(1, self._config.max_batch_size))

    def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta | Completion]:
        """Deltas per finished canvas, then the Completion; closing the iterator cancels the row.

        Submits at once, so a full queue raises QueueFullError here, before any byte is streamed.
        """
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[StreamDelta | Completion | BaseException] = asyncio.Queue()

        def emit(event: StreamDelta | Completion | BaseException) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the loop is gone (shutdown): nobody is listening any more
                pass

        row = self._submit(request, emit)
        return self._events(row, events)

    async def _events(self, row: Row, events: asyncio.Queue[StreamDelta | Completion | BaseException],
                      ) -> AsyncIterator[StreamDelta | Completion]:
        try:
            while True:
                event = await events.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if isinstance(event, Completion):
                    return
        finally:
            row.cancelled = True  # harmless once finished; frees the slot at the next tick otherwise

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
    def _active(self) -> list[_Slot]:
        return [m for c in self._cohorts for m in c.members]

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while self._running:
            self._admit(block=not self._cohorts)
            if not self._cohorts:
                continue
            self.ticks += 1
            for cohort in list(self._cohorts):
                self._advance(cohort)
            self._cohorts = [c for c in self._cohorts if c.members]

    def _should_admit(self, room: int) -> bool:
        """Start a new cohort when idle, when it would be full, or when the oldest waiter waited long enough.

        Waiting briefly for running cohorts to reach their canvas boundary lets arrivals share batched
        passes instead of each opening a one-row cohort; `max_join_wait_s` bounds what that costs a request.
        """
        if not self._cohorts:
            return True
        waiting = self._waiting.qsize()
        if waiting == 0 or room <= 0:
            return False
        if waiting >= room:
            return True
        with self._waiting.mutex:
            oldest = self._waiting.queue[0].queued_at if self._waiting.queue else time.monotonic()
        return time.monotonic() - oldest >= self._config.max_join_wait_s

    def _admit(self, *, block: bool) -> None:
        room = self._config.max_batch_size - len(self._active)
        if not self._should_admit(room):
            return
        joining: list[_Slot] = []
        while len(joining) < room:
            try:
                slot = self._waiting.get(timeout=0.05) if block and not joining else self._waiting.get_nowait()
            except queue.Empty:
                break
            if not slot.row.cancelled:
                self.admitted_at_tick[slot.row.request.request_id] = self.ticks
                joining.append(slot)
        if joining:
            self._cohorts.append(Cohort(joining, self._loaded.model, self.sampling, self.meter,
                                        self._loaded.device, self.sampling.pad_id))

    def _advance(self, cohort: Cohort) -> None:
        try:
            cohort.step(self._converged)
        except Exception as exc:  # noqa: BLE001 - a failed batched pass fails its cohort, not the engine
            for slot in cohort.members:
                slot.row.state = RowState.DONE
                slot.emit(GenerationFailedError(f"{type(exc).__name__}: {exc}"))
            cohort.members = []

    def _converged(self, slot: _Slot) -> None:
        try:
            self._finish_canvas(slot)
        except Exception as exc:  # noqa: BLE001 - one failing request must not take the batch down
            slot.row.state = RowState.DONE
            slot.emit(GenerationFailedError(f"{type(exc).__name__}: {exc}"))

    def _finish_canvas(self, slot: _Slot) -> None:
        row = slot.row
        row.commit(self.sampling)
        text = self._loaded.tokenizer.decode(row.tokens)
        stop_at = self._stop_index(text, row.request.stop)
        if stop_at is not None:
            text, row.finish_reason = text[:stop_at], "stop"
            row.tokens = self._loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
        if row.finish_reason is None:
            hold = max((len(s) for s in row.request.stop), default=1) - 1  # a stop string may span canvases
            self._emit_text(slot, text[: len(text) - hold] if hold else text)
            return  # the cohort encodes this canvas and opens the next at its canvas boundary
        self._emit_text(slot, text)
        row.state = RowState.DONE
        slot.emit(self._completion(row, text))

    @staticmethod
    def _stop_index(text: str, stops: Sequence[str]) -> int | None:
        found = [i for i in (text.find(s) for s in stops) if i >= 0]
        return min(found) if found else None

    def _emit_text(self, slot: _Slot, text: str) -> None:
        row = slot.row
        if len(text) > row.emitted_chars:
            slot.emit(StreamDelta(text[row.emitted_chars:]))
            row.emitted_chars = len(text)

    def _completion(self, row: Row, text: str) -> Completion:
        seconds = row.device_seconds[0]
        confidence = row.confidence()
        return Completion(text=text, finish_reason=row.finish_reason or "length",
                          prompt_tokens=len(row.prompt_ids), completion_tokens=len(row.tokens),
                          device_seconds=seconds, cost_usd=self.meter.cost_usd(seconds), confidence=confidence,
                          model=self.model_name)

