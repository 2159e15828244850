"""Prompt tokens a provider reads from its prompt cache are billed at its cached-input rate (OpenAI: half the input
price for gpt-4o-mini), as LiteLLM prices them: the ledger charged them at the full input price, overstating every
hosted bill of an app with a long shared system prompt."""

from __future__ import annotations

import pytest

from gateway.simulator import Fault
from tests.conftest import hosted_config
from tests.gateway.test_chat_hosted import client, flushed_db

PROMPT = [{"role": "user", "content": "Tell me about the weather in Oslo."}]
USAGE = {"prompt_tokens": 2000, "completion_tokens": 10, "total_tokens": 2010,
         "prompt_tokens_details": {"cached_tokens": 1536}}
# gpt-4o-mini in LiteLLM's map: input $0.15, cached input $0.075, output $0.60 per million tokens
CACHED_BILL = (464 * 0.15 + 1536 * 0.075 + 10 * 0.60) / 1e6
FULL_BILL = (2000 * 0.15 + 10 * 0.60) / 1e6


@pytest.mark.parametrize("stream", [False, True])
def test_cached_prompt_tokens_are_billed_at_the_cached_rate(gateway_factory, simulator, stream: bool) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    simulator.state.faults.append(Fault(usage=USAGE))
    if stream:
        raw = client(gw).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=PROMPT, stream=True,
                                                                   stream_options={"include_usage": True})
        request_id = raw.headers["x-draftgate-request-id"]
        chunks = list(raw.parse())
        assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens_details is not None
        assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 1536  # relayed as the provider sent it
    else:
        raw = client(gw).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=PROMPT)
        request_id = raw.headers["x-draftgate-request-id"]
        assert float(raw.headers["x-draftgate-cost-usd"]) == pytest.approx(CACHED_BILL, rel=1e-6)
    row = flushed_db(gw).get_record(request_id)
    assert row is not None and (row.prompt_tokens, (row.detail or {}).get("cached_prompt_tokens")) == (2000, 1536)
    assert row.hosted_cost_usd == pytest.approx(CACHED_BILL, rel=1e-6)


def test_a_cached_count_larger_than_the_prompt_is_not_believed(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    simulator.state.faults.append(Fault(usage={**USAGE, "prompt_tokens_details": {"cached_tokens": 5000}}))
    raw = client(gw).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=PROMPT)
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and "cached_prompt_tokens" not in (row.detail or {})
    assert row.hosted_cost_usd == pytest.approx(FULL_BILL, rel=1e-6)


def priced_config(url: str, price: str) -> str:
    """The hosted test config with a price override on gpt-4o-mini."""
    config = hosted_config(url).replace("    timeout_s: 2\n    max_retries: 2\n",
                                        f"    timeout_s: 2\n    max_retries: 2\n    price: {price}\n", 1)
    assert price in config
    return config


def test_a_price_override_takes_a_cached_input_rate(gateway_factory, simulator) -> None:
    gw = gateway_factory(priced_config(simulator.base_url,
                                       "{input_per_mtok: 1.0, output_per_mtok: 2.0, cached_input_per_mtok: 0.1}"))
    simulator.state.faults.append(Fault(usage=USAGE))
    raw = client(gw).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=PROMPT)
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and row.hosted_cost_usd == pytest.approx((464 * 1.0 + 1536 * 0.1 + 10 * 2.0) / 1e6)


WRITE_USAGE = {"prompt_tokens": 2000, "completion_tokens": 10, "total_tokens": 2010,
               "cache_creation_input_tokens": 1200, "cache_read_input_tokens": 500,
               "prompt_tokens_details": {"cached_tokens": 500, "cache_creation_tokens": 1200}}


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_cache_writes_are_billed_at_the_cache_write_rate(gateway_factory, simulator, stream: bool) -> None:
    """Anthropic bills tokens written to its prompt cache at 1.25x the input price and LiteLLM (and a LiteLLM proxy
    upstream) reports them as `cache_creation_input_tokens`, part of `prompt_tokens`: the ledger billed them at the
    input price, under-charging every request that primed a cache."""
    gw = gateway_factory(priced_config(simulator.base_url, "{input_per_mtok: 3.0, output_per_mtok: 15.0, "
                                       "cached_input_per_mtok: 0.3, cache_write_input_per_mtok: 3.75}"))
    simulator.state.faults.append(Fault(usage=WRITE_USAGE))
    bill = (300 * 3.0 + 500 * 0.3 + 1200 * 3.75 + 10 * 15.0) / 1e6
    if stream:
        raw = client(gw).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=PROMPT, stream=True,
                                                                   stream_options={"include_usage": True})
        list(raw.parse())
    else:
        raw = client(gw).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=PROMPT)
        assert float(raw.headers["x-draftgate-cost-usd"]) == pytest.approx(bill, rel=1e-6)
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and row.hosted_cost_usd == pytest.approx(bill, rel=1e-6)
    assert (row.detail or {}).get("cache_write_prompt_tokens") == 1200
    assert (row.detail or {}).get("cached_prompt_tokens") == 500


def test_litellm_map_cache_write_rate_is_read() -> None:
    from ledger import PriceBook

    book = PriceBook()
    name = next(k for k, v in book._map.items() if str(k).startswith("claude-") and isinstance(v, dict)
                and v.get("cache_creation_input_token_cost") and v.get("input_cost_per_token"))
    entry, price = book._map[name], book.lookup(name)
    assert price is not None and price.cache_write_input_per_mtok == pytest.approx(
        entry["cache_creation_input_token_cost"] * 1e6)
    assert price.cost_usd(1000, 0, 0, 1000) == pytest.approx(1000 * entry["cache_creation_input_token_cost"])
    assert price.cost_usd(1000, 0, 0, 5000) == pytest.approx(1000 * entry["cache_creation_input_token_cost"])  # capped
