"""The LLM-judge verifier's hosted call, priced: the provider bills a judge's tokens like any answer's."""

from __future__ import annotations

import asyncio
from typing import Any

from router.executor import Pricing
from router.hosted import HostedClient, usage_of
from router.usage import TokenEstimator, answer_text
from router.verifiers import JudgeFn, JudgeReply


def priced_judge(hosted: HostedClient, pricing: Pricing) -> JudgeFn:
    """The LLM-judge verifier's hosted call, with its bill: the provider charges the judge's tokens, so the
    request it judged carries them (usage as reported, else counted here, as for any hosted answer)."""
    tokens = TokenEstimator()

    async def judge(alias: str, messages: list[dict[str, Any]]) -> JudgeReply:
        result = await hosted.complete(alias, {"messages": messages, "max_tokens": 16, "temperature": 0})
        text = answer_text(result.body)
        usage = usage_of(result.body)
        if usage is None:
            usage = await asyncio.to_thread(tokens.usage, result.model.model, messages, [text])
        prompt_tokens, completion_tokens = usage
        return JudgeReply(text, pricing.hosted_cost(result.model, prompt_tokens, completion_tokens), prompt_tokens,
                          completion_tokens)

    return judge
