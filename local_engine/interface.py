"""Values exchanged with the engine: configuration, requests, confidence signals and results."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Protocol, TypedDict, runtime_checkable


@dataclass(frozen=True)
class EngineConfig:
    """How to load and run the local model; built by the gateway from the YAML `local:` section."""

    model: str | None = None  # None = the bundled tiny checkpoint
    backend: str = "transformers"  # or "vllm"
    device: str = "auto"
    dtype: str = "auto"
    threads: int | None = None
    max_batch_size: int = 8
    max_queue: int = 64
    device_usd_per_hour: float | None = None  # None = the default for the device kind
    max_tokens: int = 512
    api_bases: tuple[str, ...] = ()  # vllm backend
    served_model: str | None = None  # vllm: the model name to send upstream
    api_key: str | None = field(default=None, repr=False)  # vllm: sent as `Authorization: Bearer` (its --api-key)
    prefix_cache_tokens: int = 32_768  # prompt-prefix KV reuse: tokens of shared prefixes kept (0: off)
    prefix_cache_min_tokens: int = 64  # shorter prefixes are encoded with their request, not cached
    first_canvas_length: int | None = None  # cap on a request's first canvas (None: only max_tokens caps it)
    max_model_len: int | None = None  # context window, prompt plus answer (None: the checkpoint's own; vllm: unknown)
    timeout_s: float = 120.0  # vllm: how long a server may stay silent (no headers, no chunk) before it counts as down


@dataclass(frozen=True)
class SamplingOptions:
    """Sampling parameters only some backends apply (vLLM does, DiffusionGemma's generate() does not). None is
    "not asked for": neutral values (a penalty of 0, an empty bias, top_k -1) are None too, so a backend
    without the option can still serve what SDKs send by default."""

    logprobs: bool | None = None
    top_logprobs: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: Mapping[str, float] | None = None
    top_k: int | None = None  # vLLM's extensions to OpenAI's parameters, sent through the SDK's extra_body
    min_p: float | None = None
    repetition_penalty: float | None = None

    def asked(self) -> dict[str, Any]:
        """The options set, by name, in declaration order: what an upstream body carries."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


def choice_limit(config: EngineConfig) -> int | None:
    """The most choices (`n`) one request can ever have queued at once: an idle in-process engine's batch and
    queue; a vLLM pool takes each choice as its own request."""
    return None if config.backend == "vllm" else config.max_queue + config.max_batch_size


@dataclass(frozen=True)
class LocalCapabilities:
    """What a backend honours beyond plain sampling, so that the planner refuses (or, in a cascade, sends to
    the hosted model) only what this backend would otherwise silently ignore."""

    sampling_options: frozenset[str] = frozenset()  # SamplingOptions fields it applies
    max_choices: int | None = None  # the most choices (`n`) one request can have queued at once; None: no limit

    def missing(self, options: SamplingOptions) -> list[str]:
        """The options asked for that this backend does not apply, in declaration order."""
        return [name for name in options.asked() if name not in self.sampling_options]


PLAIN_SAMPLING = LocalCapabilities()  # temperature, top_p, seed, stop and max_tokens only


class TopLogprob(TypedDict):
    """One candidate token, as OpenAI's `top_logprobs` entries (and vLLM's) have it."""

    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    """One generated token's log probability and its most likely alternatives: OpenAI's `logprobs.content`."""

    top_logprobs: list[TopLogprob]


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    messages: Sequence[Mapping[str, Any]]
    max_tokens: int | None = None
    temperature: float | None = None
    stop: Sequence[str] = ()
    seed: int | None = None
    top_p: float | None = None  # nucleus sampling; None or 1: the whole distribution, as generate() samples
    options: SamplingOptions = SamplingOptions()  # only for a backend whose capabilities list them


@dataclass(frozen=True)
class Confidence:
    """How sure the model was: the router's escalation signals."""

    steps_per_canvas: tuple[int, ...]
    step_cap_hit: bool
    tokens_per_pass: float
    mean_entropy: float
    max_entropy: float
    measured: bool = True  # False where the backend reports none (a vLLM server): no signal, not a zero

    def as_dict(self) -> dict[str, Any]:
        """The signals; empty when none were measured, so a `min_confidence` check sees them missing."""
        if not self.measured:
            return {}
        return {"steps_per_canvas": list(self.steps_per_canvas), "step_cap_hit": self.step_cap_hit,
                "tokens_per_pass": round(self.tokens_per_pass, 4), "mean_entropy": round(self.mean_entropy, 6),
                "max_entropy": round(self.max_entropy, 6)}


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int  # useful tokens only: up to EOS, a stop string or max_tokens
    device_seconds: float
    cost_usd: float
    confidence: Confidence
    model: str
    cached_tokens: int = 0  # prompt tokens served from the prefix cache (OpenAI's prompt_tokens_details)
    logprobs: tuple[TokenLogprob, ...] | None = None  # every token's, when asked for and the backend gives them
    usage_estimated: bool = False  # token counts estimated here: the model server reported none that could be true


@dataclass(frozen=True)
class StreamDelta:
    """New text from one finished canvas, and what the request has used so far: the ledger's figures
    for a stream its client leaves before the Completion."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    device_seconds: float = 0.0
    cost_usd: float = 0.0
    logprobs: tuple[TokenLogprob, ...] | None = None  # the new text's tokens', when asked for
    usage_estimated: bool = False  # as Completion's


@runtime_checkable
class MeteredStream(Protocol):
    """A backend's stream that can say what its request has used so far, canvas finished or not: a client
    that leaves before the first canvas still cost the passes its row was part of."""

    def spent(self) -> StreamDelta | None: ...


class LocalBackend(Protocol):
    """What the router needs from a local model server (in-process engine or a vLLM pool)."""

    model_name: str
    context_length: int | None  # prompt plus answer tokens a request may use; None: not known here
    capabilities: ClassVar[LocalCapabilities]  # known before loading: the planner asks at startup

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def is_ready(self) -> bool: ...  # can serve now (/readyz): loaded, or some server of the pool alive
    def count_prompt_tokens(self, messages: Sequence[Mapping[str, Any]]) -> int: ...
    async def generate(self, request: GenerationRequest) -> Completion: ...
    def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta | Completion]: ...
