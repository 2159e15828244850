"""One request inside the engine: its cache, canvas, denoising state, signals and output so far.

A row advances one unit of work per scheduler tick: the prompt's encoder pass, one denoising step,
or the commit of a finished canvas (then, unless it is done, the canvas's encoder pass). Everything
here mirrors `DiffusionGemmaGenerationMixin.generate` for one row: temperature schedule, entropy-bound
acceptance, renoising, the stable-and-confident stop, argmax commit, pad after EOS.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from local_engine.interface import Confidence, GenerationRequest


class RowState(enum.Enum):
    NEW = "new"  # prompt not encoded yet
    DENOISING = "denoising"
    DONE = "done"


@dataclass(frozen=True)
class Sampling:
    """The checkpoint's generation settings, with this request's temperature applied."""

    canvas_length: int
    max_steps: int
    t_min: float
    t_max: float
    entropy_bound: float
    confidence_threshold: float
    vocab_size: int
    eos_id: int
    pad_id: int

    def temperature(self, cur_step: int, scale: float) -> float:
        """Linear schedule t_max → t_min as cur_step counts down N..1, scaled by the request."""
        return (self.t_min + (self.t_max - self.t_min) * cur_step / self.max_steps) * scale


@dataclass
class Row:
    request: GenerationRequest
    prompt_ids: list[int]
    max_tokens: int
    generator: torch.Generator
    temperature_scale: float
    state: RowState = RowState.NEW
    cache: Any = None
    position: int = 0  # tokens in the cache
    canvas: torch.Tensor | None = None  # (1, L) current noisy canvas
    argmax: torch.Tensor | None = None  # (1, L)
    self_conditioning: torch.Tensor | None = None  # (1, L, V)
    step: int = 0  # denoising steps taken on the current canvas
    steps_per_canvas: list[int] = field(default_factory=list)
    step_cap_hit: bool = False
    tokens: list[int] = field(default_factory=list)  # useful tokens committed
    entropies: list[float] = field(default_factory=list)  # commit-time entropy of each useful token
    decoder_passes: int = 0
    device_seconds: list[float] = field(default_factory=lambda: [0.0])
    finish_reason: str | None = None
    cancelled: bool = False
    emitted_chars: int = 0
    last_entropy: torch.Tensor | None = None  # (1, L) entropy of the model's own distribution, latest step
    converged_canvas: bool = False  # True from the commit of a canvas until the next one opens
    last_canvas: torch.Tensor | None = None  # (L,) the committed canvas, to encode at the boundary

    def new_cache(self, text_config: Any) -> None:
        self.cache = DynamicCache(config=text_config)

    def start_canvas(self, sampling: Sampling, device: torch.device) -> None:
        self.canvas = torch.randint(0, sampling.vocab_size, (1, sampling.canvas_length), generator=self.generator
                                    ).to(device)
        self.argmax = None
        self.self_conditioning = None
        self.step = 0
        self.state = RowState.DENOISING
        self.converged_canvas = False

    def denoise(self, logits: torch.Tensor, sampling: Sampling) -> bool:
        """Applies one step's logits (1, L, V); returns True when this canvas has converged."""
        cur_step = sampling.max_steps - self.step  # counts down N..1 as in generate
        temperature = sampling.temperature(cur_step, self.temperature_scale)
        processed = logits / max(temperature, 1e-6)
        probs = torch.softmax(processed, dim=-1, dtype=torch.float32)  # (1, L, V)
        entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1)  # (1, L)
        new_argmax = processed.argmax(-1)  # (1, L)
        if self.temperature_scale == 0:
            sampled = new_argmax
        else:
            flat = probs.view(-1, probs.shape[-1]).cpu()
            sampled = torch.multinomial(flat, 1, generator=self.generator).view_as(new_argmax).to(new_argmax.device)
        order = torch.argsort(entropy, dim=-1)
        sorted_entropy = torch.gather(entropy, -1, order)
        accept_sorted = (torch.cumsum(sorted_entropy, -1) - sorted_entropy) <= sampling.entropy_bound
        accepted = torch.zeros_like(accept_sorted).scatter(-1, order, accept_sorted)
        assert self.canvas is not None
        noise = torch.randint(0, sampling.vocab_size, self.canvas.shape, generator=self.generator).to(self.canvas.device)
        self.canvas = torch.where(accepted, sampled, noise)
        stable = self.argmax is not None and bool((self.argmax == new_argmax).all())
        confident = float(entropy.mean()) < sampling.confidence_threshold
        self.argmax = new_argmax
        self.self_conditioning = processed
        self.step += 1
        # The confidence signal is the model's own uncertainty (temperature 1), not the sampling
        # distribution's: at temperature 0 that one is one-hot and would always read 0.
        raw = torch.softmax(logits, dim=-1, dtype=torch.float32) if temperature != 1.0 else probs
        self.last_entropy = -(raw * torch.log(raw.clamp_min(1e-12))).sum(-1)
        converged = stable and confident
        if not converged and self.step >= sampling.max_steps:
            self.step_cap_hit = True
            return True
        return converged

    def commit(self, sampling: Sampling) -> list[int]:
        """Commits the argmax canvas: useful tokens up to EOS and max_tokens. Returns the whole canvas ids."""
        assert self.argmax is not None
        self.last_canvas = self.argmax[0]
        canvas = self.argmax[0].tolist()
        assert self.last_entropy is not None
        entropy = self.last_entropy[0].tolist()
        self.steps_per_canvas.append(self.step)
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
        return canvas

    def confidence(self) -> Confidence:
        # A draft with no useful token (EOS first) is judged on the whole canvas it committed.
        entropies = self.entropies or (self.last_entropy[0].tolist() if self.last_entropy is not None else [0.0])
        useful = len(self.tokens)
        return Confidence(steps_per_canvas=tuple(self.steps_per_canvas), step_cap_hit=self.step_cap_hit,
                          tokens_per_pass=useful / max(1, self.decoder_passes),
                          mean_entropy=sum(entropies) / max(1, len(entropies)), max_entropy=max(entropies))
