"""The LLM-judge verifier's hosted call, priced: the provider bills a judge's tokens like any answer's."""

from __future__ import annotations

import asyncio
from typing import Any

from router.errors import UpstreamError
from router.hosted import Attempt, HostedClient, HostedModel, answer_usage
from router.pricing import Pricing
from router.usage import TokenEstimator, answer_text, counted
from router.verifiers import JudgeFn, JudgeReply

JUDGE_MAX_TOKENS = 16  # `SCORE: N`, with room to spare
# A reasoning model spends its completion budget thinking before it writes a word: at 16 its answer is empty.
REASONING_JUDGE_MAX_TOKENS = 4096


def judge_body(chain: list[HostedModel], pricing: Pricing, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The judge call's parameters, as LiteLLM's `drop_params` would adapt them: a reasoning model anywhere in
    the alias's chain (o1/o3/gpt-5 refuse `max_tokens` and a `temperature` other than 1) gets a reasoning-sized
    `max_completion_tokens` and its default temperature; any other a short, greedy answer."""
    if any(pricing.reasons(model) for model in chain):
        return {"messages": messages, "max_completion_tokens": REASONING_JUDGE_MAX_TOKENS}
    return {"messages": messages, "max_tokens": JUDGE_MAX_TOKENS, "temperature": 0}


def priced_judge(hosted: HostedClient, pricing: Pricing) -> JudgeFn:
    """The LLM-judge verifier's hosted call, with its bill: the provider charges the judge's tokens, so the
    request it judged carries them (usage as reported, else counted here, as for any hosted answer). A judge
    that failed after the provider took the call (a broken 200), or was cancelled with it in flight (its client
    gone), raises with its prompt's bill as `outcome`."""
    tokens = TokenEstimator()

    async def judge(alias: str, messages: list[dict[str, Any]]) -> JudgeReply:
        attempts: list[Attempt] = []
        try:
            result = await hosted.complete(alias, judge_body(hosted.chain(alias), pricing, messages), attempts)
        except (UpstreamError, asyncio.CancelledError) as exc:  # a call given up in flight is billed its prompt too
            if bills := await pricing.unanswered_bills(
                    attempts, lambda model: counted(tokens.prompt_tokens, model, messages)):
                costs = [cost for _, cost in bills]
                exc.outcome = JudgeReply(  # type: ignore[union-attr]  # a CancelledError takes the slot too
                    "", None if None in costs else sum(c or 0.0 for c in costs), sum(n for n, _ in bills))
            raise
        (prompt_tokens, completion_tokens), _ = await answer_usage(tokens, result, messages)
        return JudgeReply(answer_text(result.body), pricing.hosted_cost(result.model, prompt_tokens, completion_tokens),
                          prompt_tokens, completion_tokens)

    return judge
