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
    Completion,
    Confidence,
    EngineConfig,
    GenerationRequest,
    LocalBackend,
    MeteredStream,
    StreamDelta,
)


def create_backend(config: EngineConfig) -> LocalBackend:
    """Loads the configured backend (blocking: model weights load here, once, at startup)."""
    if config.backend == "vllm":
        from local_engine.vllm_backend import VllmBackend

        return VllmBackend(config)
    from local_engine.engine import DiffusionEngine

    return DiffusionEngine.load(config)


__all__ = [
    "Completion",
    "Confidence",
    "ContextLengthError",
    "EngineConfig",
    "EngineError",
    "EngineUnavailableError",
    "GenerationFailedError",
    "GenerationRequest",
    "LocalBackend",
    "MeteredStream",
    "QueueFullError",
    "RequestRejectedError",
    "StreamDelta",
    "create_backend",
]
