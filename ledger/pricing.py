"""Token prices: YAML overrides first, then LiteLLM's bundled cost map, read offline.

The map is read as a JSON file from LiteLLM's package directory without importing LiteLLM
(that import costs seconds and may try the network).
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

log = logging.getLogger("draftgate.ledger")
COST_MAP_FILE = "model_prices_and_context_window_backup.json"


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input_per_mtok: float
    output_per_mtok: float
    cached_input_per_mtok: float | None = None  # prompt tokens read from the provider's prompt cache; None: full price
    cache_write_input_per_mtok: float | None = None  # prompt tokens written to it (Anthropic: 1.25x); None: full price

    def cost_usd(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0,
                 cache_write_tokens: int = 0) -> float:
        """`cached_tokens` (read from the provider's prompt cache) and `cache_write_tokens` (written to it) are part
        of `prompt_tokens`, as OpenAI's and LiteLLM's usage count them, and priced at their own rates."""
        cached = min(max(cached_tokens, 0), prompt_tokens)
        written = min(max(cache_write_tokens, 0), prompt_tokens - cached)
        cached_rate = self.input_per_mtok if self.cached_input_per_mtok is None else self.cached_input_per_mtok
        write_rate = self.input_per_mtok if self.cache_write_input_per_mtok is None else self.cache_write_input_per_mtok
        return ((prompt_tokens - cached - written) * self.input_per_mtok + cached * cached_rate
                + written * write_rate + completion_tokens * self.output_per_mtok) / 1_000_000


@cache
def _litellm_cost_map() -> dict[str, Any]:
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        log.warning("litellm is not installed: only YAML price overrides are known")
        return {}
    path = Path(next(iter(spec.submodule_search_locations))) / COST_MAP_FILE
    data: dict[str, Any] = json.loads(path.read_text())
    data.pop("sample_spec", None)
    return data


def _candidates(model: str) -> list[str]:
    """Keys to try, as LiteLLM does: the full string, then without the `provider/` prefix."""
    keys = [model]
    if "/" in model:
        provider, rest = model.split("/", 1)
        keys.append(rest)
        keys.append(f"{provider}/{rest.split('/', 1)[-1]}")
    return keys


class PriceBook:
    """Looks up prices by alias or provider model string; None means unknown (never $0)."""

    def __init__(self, overrides: Mapping[str, Price] | None = None,
                 cost_map: Mapping[str, Any] | None = None) -> None:
        self._overrides = dict(overrides or {})
        self._map = _litellm_cost_map() if cost_map is None else cost_map

    def _entries(self, model: str) -> list[dict[str, Any]]:
        """The map's entries for a model string, as LiteLLM looks them up, best first."""
        provider = model.split("/", 1)[0] if "/" in model else None
        found = []
        for key in _candidates(model):
            entry = self._map.get(key)
            if not isinstance(entry, dict):
                continue
            if (provider and key != model and entry.get("litellm_provider") not in (None, provider)
                    and not str(entry.get("litellm_provider", "")).startswith(provider)):
                continue
            found.append(entry)
        return found

    def lookup(self, model: str) -> Price | None:
        if model in self._overrides:
            return self._overrides[model]
        for entry in self._entries(model):
            inp, out = entry.get("input_cost_per_token"), entry.get("output_cost_per_token")
            if out is None and entry.get("mode") == "embedding":  # no output to price (mistral-embed lists none)
                out = 0.0
            if isinstance(inp, (int, float)) and isinstance(out, (int, float)):
                return Price(float(inp) * 1_000_000, float(out) * 1_000_000,
                             _per_mtok(entry.get("cache_read_input_token_cost")),
                             _per_mtok(entry.get("cache_creation_input_token_cost")))
        return None

    def vector_size(self, model: str) -> int | None:
        """How long an embedding model's vectors are, as LiteLLM's map lists it (None: not an embedding model, or
        not listed)."""
        for entry in self._entries(model):
            size = entry.get("output_vector_size")
            if isinstance(size, int) and not isinstance(size, bool):
                return size
        return None

    def supports_reasoning(self, model: str) -> bool:
        """LiteLLM's map says the model reasons before it answers (o-series, gpt-5, ...): such a model bills its
        reasoning as completion tokens, and OpenAI's refuse `max_tokens` and a `temperature` other than 1."""
        return any(entry.get("supports_reasoning") is True for entry in self._entries(model))

    def cost_usd(self, model: str, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0,
                 cache_write_tokens: int = 0) -> float | None:
        price = self.lookup(model)
        return None if price is None else price.cost_usd(prompt_tokens, completion_tokens, cached_tokens,
                                                         cache_write_tokens)


def _per_mtok(per_token: Any) -> float | None:
    return float(per_token) * 1_000_000 if isinstance(per_token, (int, float)) else None
