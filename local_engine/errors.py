"""Errors raised by the local engine. They carry data; the gateway decides the HTTP status."""

from __future__ import annotations


class EngineError(Exception):
    """Base class of every local-engine error."""


class QueueFullError(EngineError):
    """The bounded request queue is full; try again after `retry_after_s`."""

    def __init__(self, retry_after_s: float, queued: int) -> None:
        super().__init__(f"local queue full ({queued} waiting)")
        self.retry_after_s = retry_after_s
        self.queued = queued


class EngineUnavailableError(EngineError):
    """The engine is not running (not loaded, stopping, or its model is missing)."""


class GenerationFailedError(EngineError):
    """This request failed inside the engine; other requests in its batch are unaffected."""


class RequestRejectedError(EngineError):
    """A model server refused the request itself (a 4xx other than 429): another server would too."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class ContextLengthError(EngineError):
    """The prompt alone fills the model's context window: no token of an answer would fit."""

    def __init__(self, prompt_tokens: int, context_length: int) -> None:
        super().__init__(f"the local model's context is {context_length} tokens, and these messages are "
                         f"{prompt_tokens}; shorten them or send the request to a hosted model")
        self.prompt_tokens = prompt_tokens
        self.context_length = context_length
