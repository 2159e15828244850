"""One request inside the engine: its settings, random stream, committed tokens and confidence signals.

The denoising state itself (canvas, argmax, self-conditioning logits, step) lives in the batch's
tensors, one row per request (`local_engine/batch.py`); a Row keeps what is per request and what
outlives a canvas. Commit mirrors `DiffusionGemmaGenerationMixin.generate`: the argmax canvas is the
answer, tokens after EOS are dropped; the engine also trims to max_tokens exactly.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch

from local_engine.interface import Confidence, GenerationRequest


class RowState(enum.Enum):
    NEW = "new"  # queued, prompt not encoded yet
    DENOISING = "denoising"  # its current canvas is being denoised
    BOUNDARY = "boundary"  # canvas committed, waiting for the batch's next canvas boundary to be encoded
    DONE = "done"


def fit(lengths: tuple[int, ...], tokens: int) -> int:
    """The shortest of `lengths` (ascending) that holds `tokens`, else the longest."""
    return next((n for n in lengths if n >= tokens), lengths[-1])


@dataclass(frozen=True)
class Sampling:
    """The checkpoint's generation settings (the request's temperature scales the schedule per row).

    `canvas_length` is the longest canvas (the checkpoint's); `canvas_lengths` are the lengths the
    checkpoint was trained to denoise (ascending, ending at `canvas_length`; empty: only that one), and
    `first_canvas` caps a request's first canvas (0: no cap).
    """

    canvas_length: int
    max_steps: int
    t_min: float
    t_max: float
    entropy_bound: float
    confidence_threshold: float
    vocab_size: int
    eos_id: int
    pad_id: int
    canvas_lengths: tuple[int, ...] = ()
    first_canvas: int = 0

    def fitted(self, tokens: int) -> int:
        """The shortest supported canvas holding `tokens`, else the longest."""
        return fit(self.canvas_lengths or (self.canvas_length,), tokens)


@dataclass
class Row:
    request: GenerationRequest
    prompt_ids: list[int]
    max_tokens: int
    generator: torch.Generator | None  # None: unseeded, draws from the engine thread's global generator
    temperature_scale: float
    prefix_cuts: tuple[int, ...] = ()  # prompt prefixes (token counts, ascending) the prefix cache may hold
    cached_tokens: int = 0  # prompt tokens whose encoder states did come from it
    state: RowState = RowState.NEW
    canvas_length: int = 0  # of the canvas it is denoising (or last committed)
    steps_per_canvas: list[int] = field(default_factory=list)
    step_cap_hit: bool = False
    tokens: list[int] = field(default_factory=list)  # useful tokens committed
    entropies: list[float] = field(default_factory=list)  # commit-time entropy of each useful token
    canvas_entropy: list[float] = field(default_factory=list)  # the last committed canvas's, every position
    decoder_passes: int = 0
    device_seconds: list[float] = field(default_factory=lambda: [0.0])
    finish_reason: str | None = None
    cancelled: bool = False
    emitted_chars: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature_scale == 0

    def next_canvas_length(self, sampling: Sampling) -> int:
        """A canvas fitted to the request: no longer than what max_tokens leaves room for (plus EOS), the
        first one at most `first_canvas`, each later one at most twice the last (an answer longer than a
        short first canvas costs one more canvas, not many)."""
        room = self.max_tokens - len(self.tokens) + 1
        if self.steps_per_canvas:
            room = min(room, 2 * self.canvas_length)
        elif sampling.first_canvas:
            room = min(room, sampling.first_canvas)
        return sampling.fitted(room)

    def commit(self, canvas: list[int], entropy: list[float], steps: int, sampling: Sampling) -> None:
        """Commits an argmax canvas: useful tokens up to EOS and max_tokens; sets finish_reason when done."""
        self.steps_per_canvas.append(steps)
        self.canvas_entropy = entropy
        room = self.max_tokens - len(self.tokens)
        for token, h in zip(canvas, entropy, strict=True):
            if token == sampling.eos_id:
                self.finish_reason = "stop"
                break
            if room <= 0:
                self.finish_reason = "length"
                break
            self.tokens.append(token)
            self.entropies.append(h)
            room -= 1
        if self.finish_reason is None and len(self.tokens) >= self.max_tokens:
            self.finish_reason = "length"

    def confidence(self) -> Confidence:
        # A draft with no useful token (EOS first) is judged on the whole canvas it committed.
        entropies = self.entropies or self.canvas_entropy or [0.0]
        useful = len(self.tokens)
        return Confidence(steps_per_canvas=tuple(self.steps_per_canvas), step_cap_hit=self.step_cap_hit,
                          tokens_per_pass=useful / max(1, self.decoder_passes),
                          mean_entropy=sum(entropies) / max(1, len(entropies)), max_entropy=max(entropies))
