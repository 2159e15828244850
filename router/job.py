"""Values that flow through the router: the job to serve, the plan chosen, and what it cost."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from local_engine import SamplingOptions

if TYPE_CHECKING:
    from router.cascade import CascadeSpec
    from router.hosted import Attempt


class Route(str, enum.Enum):
    """Where a request was served: as the ledger and the `x-draftgate-route` header say it."""

    LOCAL = "local"
    HOSTED = "hosted"
    ESCALATED = "escalated"
    CACHE = "cache"  # answered from the gateway's response cache: no model was called
    NONE = "none"  # refused before a route was chosen (unknown model, a scope, a bad parameter)


CHAT = "chat.completions"
EMBEDDINGS = "embeddings"
COMPLETIONS = "completions"  # the legacy text-completions API, served as a chat request


@dataclass(frozen=True)
class Job:
    """One request, validated, as the router sees it (no HTTP types): a chat completion, or an embeddings
    request (`endpoint`), whose `input` is in `upstream_body` and whose `messages` are empty."""

    request_id: str
    alias: str
    body: dict[str, Any]  # the client's request, None fields dropped, `model` = alias
    messages: list[dict[str, Any]]
    stream: bool = False
    wants_usage: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n: int = 1  # choices asked for
    top_p: float | None = None
    sampling: SamplingOptions = field(default_factory=SamplingOptions)  # applied by only some local backends
    upstream_body: dict[str, Any] = field(default_factory=dict)  # body for hosted models, model filled in later
    endpoint: str = CHAT  # which API the client called: CHAT, COMPLETIONS or EMBEDDINGS


# vLLM's sampling extensions steer the local draft. A cascade's client named the cascade's alias, not its
# target, and OpenAI among others refuses them: an escalation leaves them out, as LiteLLM's drop_params would.
LOCAL_SAMPLING_EXTENSIONS = ("top_k", "min_p", "repetition_penalty")


def dropped_for_escalation(job: Job) -> list[str]:
    return [name for name in LOCAL_SAMPLING_EXTENSIONS if name in job.upstream_body]


def note_dropped(detail: dict[str, Any], job: Job) -> None:
    """Records in `detail` (a row's, or its escalation's) which options the cascade's target was not sent."""
    if dropped := dropped_for_escalation(job):
        detail["dropped_params"] = dropped


def for_escalation(job: Job) -> Job:
    """The job as a cascade's target gets it: without the local-only sampling extensions."""
    if not dropped_for_escalation(job):
        return job
    body = {k: v for k, v in job.upstream_body.items() if k not in LOCAL_SAMPLING_EXTENSIONS}
    return Job(**{**job.__dict__, "upstream_body": body})


@dataclass(frozen=True)
class Plan:
    """What to do with a job: serve it locally, or at a hosted alias."""

    route: Route
    alias: str  # the hosted alias for HOSTED; the local alias for LOCAL
    rule: str | None = None
    rule_summary: str | None = None
    explanation: list[dict[str, Any]] = field(default_factory=list)
    p_hosted: float | None = None
    max_local_tokens: int | None = None
    cascade: CascadeSpec | None = None  # set for draft → verify → escalate routes
    cascade_target: bool = False  # a cascade rule sends the job straight to its target (no draft possible)


@dataclass
class Outcome:
    """The result of serving a job and everything the ledger needs about it."""

    route: Route
    provider_model: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from a cache: the local engine's prefix cache, a provider's prompt cache
    cache_write_tokens: int = 0  # prompt tokens a provider wrote to its prompt cache (billed above the input price)
    hosted_cost_usd: float | None = None
    local_cost_usd: float | None = None
    device_seconds: float = 0.0
    wasted_draft_usd: float = 0.0
    unpriced: bool = False
    attempts: list[dict[str, Any]] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)
    escalation_reason: str | None = None
    body: dict[str, Any] | None = None  # the OpenAI response (non-streaming)

    def add_hosted_cost(self, cost_usd: float | None) -> None:
        """Adds another hosted call's dollars (a judge's, a billed failed attempt's); None, an unknown price,
        makes the request unpriced rather than $0. The column keeps the part that is known (None while no part
        is), the same on every route: reports never sum an unpriced row, so it is for reading, not totals."""
        if cost_usd is not None or self.hosted_cost_usd is not None:
            self.hosted_cost_usd = (self.hosted_cost_usd or 0.0) + (cost_usd or 0.0)
        self.unpriced = self.unpriced or cost_usd is None

    def add_hosted_cost_of(self, other: Outcome) -> None:
        """Adds another outcome's hosted dollars (billed attempts that answered nothing usable): its known part,
        and its being unpriced if any part of it is."""
        if other.hosted_cost_usd is not None:
            self.add_hosted_cost(other.hosted_cost_usd)
        self.unpriced = self.unpriced or other.unpriced

    @classmethod
    def unanswered(cls, attempts: Sequence[Attempt], bills: Sequence[tuple[int, float | None]]) -> Outcome:
        """What hosted attempts without a usable answer cost (`bills`: each billed one's prompt tokens and USD,
        counted here, hence `usage_estimated`); the model of the last attempt, none when none was made."""
        last = attempts[-1] if attempts else None
        outcome = cls(route=Route.HOSTED, provider_model=last.provider_model if last else None,
                      attempts=[a.as_dict() for a in attempts])
        for tokens, cost in bills:
            outcome.prompt_tokens += tokens
            outcome.add_hosted_cost(cost)
        if bills:
            outcome.detail["usage_estimated"] = True
        return outcome

    def add_billed_attempts(self, billed: Outcome) -> None:
        """Adds what earlier attempts were billed though they answered nothing usable (a broken 200): their
        prompt tokens and dollars, counted here, so the row's usage is an estimate."""
        self.prompt_tokens += billed.prompt_tokens
        self.add_hosted_cost_of(billed)
        self.detail["usage_estimated"] = True

    @property
    def cost_usd(self) -> float | None:
        """Everything this request cost; None while any part of it is unpriced."""
        if self.unpriced:
            return None
        return (self.hosted_cost_usd or 0.0) + (self.local_cost_usd or 0.0) + self.wasted_draft_usd
