"""The local engine: DiffusionGemma served in-process (continuous batching, streaming, metering), or a vLLM pool."""

from local_engine.errors import (
    ContextLengthError,
    EngineError,
    EngineUnavailableError,
    GenerationFailedError,
    QueueFullError,
    RequestRejectedError,
)
from local_engine.interface import (
    PLAIN_SAMPLING,
    Completion,
    Confidence,
    EngineConfig,
    GenerationRequest,
    LocalBackend,
    LocalCapabilities,
    MeteredStream,
    SamplingOptions,
    StreamDelta,
    TokenLogprob,
    choice_limit,
)


def create_backend(config: EngineConfig) -> LocalBackend:
    """Loads the configured backend (blocking: model weights load here, once, at startup)."""
    if config.backend == "vllm":
        from local_engine.vllm_backend import VllmBackend

        return VllmBackend(config)
    from local_engine.engine import DiffusionEngine

    return DiffusionEngine.load(config)


def backend_capabilities(backend: str) -> LocalCapabilities:
    """What a backend applies, known without loading it: the planner is built before the model loads, and
    `route explain` never loads one. (The in-process engine's module imports torch, so its value is kept in
    interface.py; tests check that it is `DiffusionEngine.capabilities`.)"""
    if backend == "vllm":
        from local_engine.vllm_backend import VllmBackend

        return VllmBackend.capabilities
    return PLAIN_SAMPLING


__all__ = [
    "PLAIN_SAMPLING",
    "Completion",
    "Confidence",
    "ContextLengthError",
    "EngineConfig",
    "EngineError",
    "EngineUnavailableError",
    "GenerationFailedError",
    "GenerationRequest",
    "LocalBackend",
    "LocalCapabilities",
    "MeteredStream",
    "QueueFullError",
    "RequestRejectedError",
    "SamplingOptions",
    "StreamDelta",
    "TokenLogprob",
    "backend_capabilities",
    "choice_limit",
    "create_backend",
]
