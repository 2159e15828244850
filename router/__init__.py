"""The router: plans each request (policy + classifier), serves it locally or hosted, verifies drafts."""

from router.cascade import Cascade, CascadeSpec, EscalationMode, OnHostedUnavailable
from router.embeddings import Embedder
from router.errors import (
    EmbeddingsUnsupportedError,
    LocalOutputInvalidError,
    LocalUnavailableError,
    RoutingError,
    UnknownModelError,
    UpstreamCoolingDownError,
    UpstreamError,
    UpstreamRateLimitedError,
    UpstreamRejectedError,
)
from router.executor import ChunkStream, Executor
from router.hosted import Attempt, HostedClient, HostedModel, HostedResult, HostedStream
from router.job import CHAT, COMPLETIONS, EMBEDDINGS, Job, Outcome, Plan, Route
from router.judge import priced_judge
from router.planner import Planner, facts_for
from router.pricing import Pricing
from router.transport import AttemptFailed, StreamBroken

__all__ = [
    "CHAT",
    "COMPLETIONS",
    "EMBEDDINGS",
    "Attempt",
    "AttemptFailed",
    "Cascade",
    "CascadeSpec",
    "ChunkStream",
    "Embedder",
    "EmbeddingsUnsupportedError",
    "EscalationMode",
    "Executor",
    "HostedClient",
    "HostedModel",
    "HostedResult",
    "HostedStream",
    "Job",
    "LocalOutputInvalidError",
    "LocalUnavailableError",
    "OnHostedUnavailable",
    "Outcome",
    "Plan",
    "Planner",
    "Pricing",
    "Route",
    "RoutingError",
    "StreamBroken",
    "UnknownModelError",
    "UpstreamCoolingDownError",
    "UpstreamError",
    "UpstreamRateLimitedError",
    "UpstreamRejectedError",
    "facts_for",
    "priced_judge",
]
