"""Hosted dollars per alias, and what an all-hosted gateway would have paid."""

from __future__ import annotations

from ledger import PriceBook
from router.hosted import HostedClient, HostedModel


class Pricing:
    """Prices hosted tokens per alias: YAML overrides first, then LiteLLM's cost map."""

    def __init__(self, prices: PriceBook, hosted: HostedClient, reference_alias: str | None) -> None:
        self._prices = prices
        self._hosted = hosted
        self._reference = reference_alias

    def hosted_cost(self, model: HostedModel, prompt_tokens: int, completion_tokens: int) -> float | None:
        """USD for these tokens at this alias; None when no price is known."""
        if self._prices.lookup(model.alias) is not None:
            return self._prices.cost_usd(model.alias, prompt_tokens, completion_tokens)
        return self._prices.cost_usd(model.model, prompt_tokens, completion_tokens)

    def reference_cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        """What the same tokens would cost at the reference hosted model (all-hosted counterfactual)."""
        if self._reference is None or self._reference not in self._hosted:
            return None
        return self.hosted_cost(self._hosted.get(self._reference), prompt_tokens, completion_tokens)
