"""Errors raised by the router: routing, verification and classification failures."""

from __future__ import annotations

from typing import Any


class RoutingError(Exception):
    """Base class of every error the router raises."""


class UnsupportedParameterError(RoutingError):
    """The chosen route cannot apply a parameter the request sets; `param` names it, as OpenAI's errors do."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class UpstreamError(RoutingError):
    """A hosted model failed after retries and fallbacks; carries the upstream's own words."""

    def __init__(self, alias: str, message: str, *, status_code: int | None = None,
                 error_type: str | None = None, attempts: int = 1, code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.alias = alias
        self.message = message
        self.status_code = status_code
        self.error_type = error_type
        self.attempts = attempts
        self.code = code  # the upstream's error code and param, relayed to the client on a refusal
        self.param = param
        self.outcome: Any = None  # what was spent before the failure (a cascade's draft), for the ledger


class UpstreamRejectedError(UpstreamError):
    """The upstream refused the request itself (a 4xx that retrying cannot fix)."""


class UpstreamRateLimitedError(UpstreamError):
    """The last upstream tried was still rate-limiting (429) after its retries: the client should back off."""

    def __init__(self, alias: str, message: str, *, retry_after_s: float | None, attempts: int = 1) -> None:
        super().__init__(alias, message, status_code=429, error_type="rate_limited", attempts=attempts)
        self.retry_after_s = retry_after_s


class UpstreamCoolingDownError(UpstreamError):
    """Every alias of the chain is cooling down after repeated failures: nothing was sent upstream."""

    def __init__(self, alias: str, retry_after_s: float) -> None:
        super().__init__(alias, f"every upstream for this alias failed repeatedly and is cooling down; retry in "
                                f"{retry_after_s:.1f} s", attempts=0)
        self.retry_after_s = retry_after_s


class UnknownModelError(RoutingError):
    """The request names a model alias the gateway does not serve."""

    def __init__(self, alias: str) -> None:
        super().__init__(f"The model `{alias}` does not exist or you do not have access to it.")
        self.alias = alias


class EmbeddingsUnsupportedError(RoutingError):
    """An embeddings request named an alias that does not embed (the local model, `auto`); `aliases` can."""

    def __init__(self, alias: str, aliases: list[str]) -> None:
        can = ", ".join(aliases) if aliases else "none is configured"
        super().__init__(f"The model `{alias}` does not serve embeddings; the hosted aliases in `models:` do "
                         f"({can}).")
        self.alias = alias


class LocalUnavailableError(RoutingError):
    """The policy chose the local model but no local backend is loaded."""


class LocalOutputInvalidError(RoutingError):
    """A local answer does not match the request's `response_format`; `outcome` holds what it cost."""

    def __init__(self, message: str, outcome: Any) -> None:
        super().__init__(message)
        self.outcome = outcome


class VerifierConfigError(RoutingError):
    """A verifier's options in the policy are wrong (caught at startup, not per request)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"verifier {kind}: {message}")
        self.kind = kind


class TrainingDataError(RoutingError):
    """Outcome data the classifier cannot be trained on; the message names the file and line."""
