"""Embeddings at a hosted alias: the chat path's retries, fallbacks, cooldowns and pricing, without policies.

Routing rules decide between the local model and hosted ones for chat; the local model does not embed, so an
embeddings request goes to the alias it names, as LiteLLM's proxy sends it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from typing import Any

from router.errors import EmbeddingsUnsupportedError, UnknownModelError, UpstreamError
from router.hosted import Attempt, HostedClient, HostedResult
from router.job import Job, Outcome, Plan, Route
from router.pricing import Pricing
from router.usage import TokenEstimator, counted, embedding_usage


def input_tokens(tokens: TokenEstimator, model: str, value: Any) -> int:
    """Tokens of an embeddings `input` counted here: a string's by the model's tokenizer, token ids one each."""
    if isinstance(value, str):
        return tokens.count(model, value)
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return len(value)
    return sum(input_tokens(tokens, model, v) for v in value) if isinstance(value, list) else 0


class Embedder:
    """Serves embeddings requests at hosted aliases and prices what each cost."""

    def __init__(self, hosted: HostedClient, pricing: Pricing, *, unembeddable: Collection[str]) -> None:
        self._hosted = hosted
        self._pricing = pricing
        self._unembeddable = frozenset(unembeddable)  # aliases clients may name for chat only (local, auto)
        self._tokens = TokenEstimator()

    def plan(self, alias: str) -> Plan:
        """The alias's hosted plan; UnknownModelError for an alias the gateway lacks, EmbeddingsUnsupportedError
        for one that only chats (the local model, `auto`)."""
        if alias in self._hosted:
            return Plan(route=Route.HOSTED, alias=alias)
        if alias in self._unembeddable:
            raise EmbeddingsUnsupportedError(alias, self._hosted.aliases)
        raise UnknownModelError(alias)

    async def run(self, job: Job) -> Outcome:
        """The upstream's answer and its ledger figures. A failure (or a cancellation) carries what the attempts
        the provider bills cost, as a chat request's does."""
        attempts: list[Attempt] = []
        try:
            result = await self._hosted.embed(job.alias, job.upstream_body, attempts)
        except (asyncio.CancelledError, UpstreamError) as exc:
            if isinstance(exc, asyncio.CancelledError) or attempts:
                exc.outcome = await self._unanswered(job, attempts)  # type: ignore[union-attr]
            raise
        outcome = await self._answered(job, result)
        if any(a.billed for a in attempts):  # earlier attempts billed though unusable (a broken 200)
            outcome.add_billed_attempts(await self._unanswered(job, attempts))
        return outcome

    async def _counted(self, model: str, job: Job) -> int:
        return await counted(input_tokens, self._tokens, model, job.upstream_body.get("input"))

    async def _answered(self, job: Job, result: HostedResult) -> Outcome:
        detail: dict[str, Any] = {}
        prompt_tokens = embedding_usage(result.body)
        if prompt_tokens is None:  # no usage, or a placeholder: the provider still bills the input
            prompt_tokens = await self._counted(result.model.model, job)
            detail["usage_estimated"] = True
            if result.body.get("usage") is not None:
                detail["upstream_usage_invalid"] = True
        cost = self._pricing.hosted_cost(result.model, prompt_tokens, 0)
        return Outcome(route=Route.HOSTED, provider_model=result.model.model, prompt_tokens=prompt_tokens,
                       hosted_cost_usd=cost, unpriced=cost is None, attempts=[a.as_dict() for a in result.attempts],
                       detail=detail, body=result.body)

    async def _unanswered(self, job: Job, attempts: Sequence[Attempt]) -> Outcome:
        """Attempts without a usable answer: each the provider bills (a broken 200, one in flight when the client
        left) is charged its input, counted here; one refused with an error status costs nothing."""
        return Outcome.unanswered(attempts, await self._pricing.unanswered_bills(
            attempts, lambda model: self._counted(model, job)))
