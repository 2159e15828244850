"""The LLM-judge verifier's hosted call, priced: the provider bills a judge's tokens like any answer's."""

from __future__ import annotations

from typing import Any

from router.hosted import HostedClient, answer_usage
from router.pricing import Pricing
from router.usage import TokenEstimator, answer_text
from router.verifiers import JudgeFn, JudgeReply


def priced_judge(hosted: HostedClient, pricing: Pricing) -> JudgeFn:
    """The LLM-judge verifier's hosted call, with its bill: the provider charges the judge's tokens, so the
    request it judged carries them (usage as reported, else counted here, as for any hosted answer)."""
    tokens = TokenEstimator()

    async def judge(alias: str, messages: list[dict[str, Any]]) -> JudgeReply:
        result = await hosted.complete(alias, {"messages": messages, "max_tokens": 16, "temperature": 0})
        (prompt_tokens, completion_tokens), _ = await answer_usage(tokens, result, messages)
        return JudgeReply(answer_text(result.body), pricing.hosted_cost(result.model, prompt_tokens, completion_tokens),
                          prompt_tokens, completion_tokens)

    return judge
