"""The LLM-judge verifier's hosted call, priced: the provider bills a judge's tokens like any answer's."""

from __future__ import annotations

import asyncio
from typing import Any

from router.errors import UpstreamError
from router.hosted import Attempt, HostedClient, answer_usage
from router.pricing import Pricing
from router.usage import TokenEstimator, answer_text
from router.verifiers import JudgeFn, JudgeReply


def priced_judge(hosted: HostedClient, pricing: Pricing) -> JudgeFn:
    """The LLM-judge verifier's hosted call, with its bill: the provider charges the judge's tokens, so the
    request it judged carries them (usage as reported, else counted here, as for any hosted answer). A judge
    that failed after the provider took the call (a broken 200) raises with its prompt's bill as `outcome`."""
    tokens = TokenEstimator()

    async def judge(alias: str, messages: list[dict[str, Any]]) -> JudgeReply:
        attempts: list[Attempt] = []
        try:
            result = await hosted.complete(alias, {"messages": messages, "max_tokens": 16, "temperature": 0},
                                           attempts)
        except UpstreamError as exc:
            billed = [hosted.get(a.alias) for a in attempts if a.billed]
            counts = [await asyncio.to_thread(tokens.prompt_tokens, m.model, messages) for m in billed]
            costs = [pricing.hosted_cost(m, n, 0) for m, n in zip(billed, counts, strict=True)]
            if billed:
                exc.outcome = JudgeReply("", None if None in costs else sum(c or 0.0 for c in costs), sum(counts))
            raise
        (prompt_tokens, completion_tokens), _ = await answer_usage(tokens, result, messages)
        return JudgeReply(answer_text(result.body), pricing.hosted_cost(result.model, prompt_tokens, completion_tokens),
                          prompt_tokens, completion_tokens)

    return judge
