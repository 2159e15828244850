"""What a row's caller receives from its committed canvases: text streamed as soon as it is final, then the
completion with its tokens, device time, cost and confidence signals."""

from __future__ import annotations

from collections.abc import Callable

from local_engine.detokenize import Detokenizer
from local_engine.interface import Completion, StreamDelta
from local_engine.metering import Meter
from local_engine.rows import Row, RowState
from local_engine.stops import stop_index, tokens_through_stop

Emit = Callable[[StreamDelta | Completion | BaseException], None]


class CanvasOutput:
    """Turns committed canvases into stream deltas and completions (the engine's worker thread calls it)."""

    def __init__(self, detokenizer: Detokenizer, meter: Meter, model_name: str) -> None:
        self._detokenizer = detokenizer
        self.meter = meter
        self.model_name = model_name

    def finish_canvas(self, row: Row, emit: Emit) -> None:
        """Streams a committed canvas's text; ends the request on EOS, max_tokens or a stop string."""
        text = self.decode(row.tokens)
        stop_at = stop_index(text, row.request.stop)
        if stop_at is not None:
            text, row.finish_reason = text[:stop_at], "stop"
            # Counted as vLLM counts them: the generated tokens up to the one that completed the stop string.
            # Re-tokenizing the cut text could count more than were generated, or than max_tokens allows
            # ("name" cut at "e" is "nam": three tokens for one).
            row.tokens = row.tokens[:tokens_through_stop(row.tokens, row.request.stop, self.decode)]
        if row.finish_reason is None:
            hold = max((len(s) for s in row.request.stop), default=1) - 1  # a stop string may span canvases
            final = self._detokenizer.final_chars(row.tokens, text)  # so may a character's bytes
            self._emit_text(row, emit, text[: max(0, min(len(text) - hold, final))])  # hold > len(text): nothing
            return  # the batch encodes this canvas and opens the next at its canvas boundary
        self._emit_text(row, emit, text)
        row.state = RowState.DONE
        emit(self.completion(row, text))

    def decode(self, tokens: list[int]) -> str:
        return self._detokenizer.decode(tokens)

    def _emit_text(self, row: Row, emit: Emit, text: str) -> None:
        if len(text) > row.emitted_chars:
            seconds = row.device_seconds[0]
            emit(StreamDelta(text[row.emitted_chars:], prompt_tokens=len(row.prompt_ids),
                             completion_tokens=len(row.tokens), device_seconds=seconds,
                             cost_usd=self.meter.cost_usd(seconds)))
            row.emitted_chars = len(text)

    def completion(self, row: Row, text: str) -> Completion:
        seconds = row.device_seconds[0]
        confidence = row.confidence()
        return Completion(text=text, finish_reason=row.finish_reason or "length",
                          prompt_tokens=len(row.prompt_ids), completion_tokens=len(row.tokens),
                          cached_tokens=row.cached_tokens,
                          device_seconds=seconds, cost_usd=self.meter.cost_usd(seconds), confidence=confidence,
                          model=self.model_name)

