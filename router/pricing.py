"""Hosted dollars per alias, and what an all-hosted gateway would have paid."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from ledger import PriceBook
from router.hosted import Attempt, HostedClient, HostedModel


class Pricing:
    """Prices hosted tokens per alias: YAML overrides first, then LiteLLM's cost map."""

    def __init__(self, prices: PriceBook, hosted: HostedClient, reference_alias: str | None) -> None:
        self._prices = prices
        self._hosted = hosted
        self._reference = reference_alias

    def hosted_cost(self, model: HostedModel, prompt_tokens: int, completion_tokens: int,
                    cached_tokens: int = 0, cache_write_tokens: int = 0) -> float | None:
        """USD for these tokens at this alias (of the prompt's, `cached_tokens` read from the provider's prompt
        cache and `cache_write_tokens` written to it, each at its own rate); None when no price is known."""
        price = self._prices.lookup(model.alias) or self._prices.lookup(model.model)
        return None if price is None else price.cost_usd(prompt_tokens, completion_tokens, cached_tokens,
                                                         cache_write_tokens)

    def reasons(self, model: HostedModel) -> bool:
        """The model reasons before it answers, by LiteLLM's map or, as LiteLLM's OpenAI configs tell them, by
        name (o1/o3/o4, gpt-5 but not gpt-5-chat: a deployment or proxy name the map does not know)."""
        name = model.upstream_name.rsplit("/", 1)[-1].lower()
        named = name.startswith(("o1", "o3", "o4")) or (name.startswith("gpt-5") and "gpt-5-chat" not in name)
        return named or self._prices.supports_reasoning(model.model)

    def reference_cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0,
                       cache_write_tokens: int = 0) -> float | None:
        """What the same tokens would cost at the reference hosted model (all-hosted counterfactual). Prompt tokens
        the local prefix cache served count at the reference's cached-input rate: its provider caches a shared
        prefix too, and pricing them in full would overstate the savings."""
        if self._reference is None or self._reference not in self._hosted:
            return None
        return self.hosted_cost(self._hosted.get(self._reference), prompt_tokens, completion_tokens, cached_tokens,
                                cache_write_tokens)

    async def unanswered_bills(self, attempts: Sequence[Attempt], count: Callable[[str], Awaitable[int]],
                               ) -> list[tuple[int, float | None]]:
        """(prompt tokens, USD) of each attempt the provider billed without a usable answer (a 200 whose body
        was broken, one abandoned in flight): at least its input, counted here by `count` for the attempt's
        provider model (a chat request's messages, an embeddings input); None where no price is known."""
        bills = []
        for model in (self._hosted.get(a.alias) for a in attempts if a.billed):
            prompt_tokens = await count(model.model)
            bills.append((prompt_tokens, self.hosted_cost(model, prompt_tokens, 0)))
        return bills
