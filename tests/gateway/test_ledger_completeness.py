"""Every request that spent tokens or device time is priced in the ledger, even when the upstream does not
say what it used (no `usage`, a stream cut short, a client gone) or the stream it sent is malformed; and a
request refused before any route was chosen is recorded as routed nowhere, not as hosted."""

from __future__ import annotations

import httpx
import openai
import pytest

from gateway.simulator import Fault
from tests.conftest import MASTER_KEY, hosted_config
from tests.gateway.test_chat_hosted import client, flushed_db
from tests.gateway.test_local_route import local_config

LONG = [{"role": "user", "content": "Tell me about the weather in Oslo in three sentences, please."}]


def _row(gw, headers):  # type: ignore[no-untyped-def]
    row = flushed_db(gw).get_record(headers["x-draftgate-request-id"])
    assert row is not None
    return row


def test_an_answer_without_usage_is_priced_from_counted_tokens(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    simulator.state.faults.append(Fault(no_usage=True))
    raw = client(gw).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=LONG)
    answer = raw.parse().choices[0].message.content or ""
    row = _row(gw, raw.headers)
    # What the provider would have reported, within a tokenizer's slack: the simulator counts words.
    assert row.prompt_tokens >= 10 and row.completion_tokens >= len(answer.split())
    assert row.hosted_cost_usd and row.hosted_cost_usd > 0 and not row.unpriced
    assert row.detail["usage_estimated"] is True
    assert float(raw.headers["x-draftgate-cost-usd"]) == pytest.approx(row.hosted_cost_usd, abs=1e-8)
    reported = client(gw).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=LONG)
    assert "usage_estimated" not in (_row(gw, reported.headers).detail or {})  # reported usage is used as is


def test_streams_without_usage_cut_short_or_abandoned_are_priced(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    simulator.state.faults.append(Fault(no_usage=True))
    raw = client(gw).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=LONG, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    row = _row(gw, raw.headers)
    assert row.status == "ok" and row.completion_tokens >= len(text.split()) > 0 and row.prompt_tokens >= 10
    assert row.hosted_cost_usd and row.hosted_cost_usd > 0 and row.detail["usage_estimated"] is True

    simulator.state.faults.append(Fault(break_stream_after=3))  # the upstream drops the connection midway
    raw = client(gw).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=LONG, stream=True)
    with pytest.raises(openai.APIError):
        list(raw.parse())
    row = _row(gw, raw.headers)
    assert (row.status, row.status_code) == ("error", 502)
    # Priced from the prompt and whatever text arrived: the reset may discard chunks the gateway had not read yet
    # (a TCP RST drops unread data), so the completion may be 0 tokens, the prompt never is.
    assert row.prompt_tokens >= 10 and row.hosted_cost_usd and row.hosted_cost_usd > 0
    assert row.detail["usage_estimated"] is True

    simulator.state.faults.append(Fault(stall_stream_after=2, stall_s=5))  # the client leaves mid-stream
    with httpx.stream("POST", gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {MASTER_KEY}"},
                      json={"model": "gpt-4o-mini", "messages": LONG, "stream": True}, timeout=10) as response:
        request_id = response.headers["x-draftgate-request-id"]
        for line in response.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                break
    for _ in range(100):
        row = flushed_db(gw).get_record(request_id)
        if row is not None:
            break
        __import__("time").sleep(0.05)
    assert row is not None and row.status == "cancelled"
    assert row.completion_tokens > 0 and row.hosted_cost_usd and row.hosted_cost_usd > 0


def test_a_dollar_budget_holds_when_the_upstream_reports_no_usage(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    created = httpx.post(gw.url + "/admin/keys", headers={"authorization": f"Bearer {MASTER_KEY}"},
                         json={"name": "tight", "max_budget_usd": 0.0055, "budget_period": "total"}).json()
    simulator.state.replies.extend(["word " * 200] * 6)
    simulator.state.faults.extend([Fault(no_usage=True)] * 6)
    statuses = []
    for _ in range(6):
        try:
            client(gw, created["key"]).chat.completions.create(model="backup", messages=LONG, max_tokens=300)
            statuses.append(200)
        except openai.RateLimitError as exc:
            statuses.append(exc.status_code)
    # Each answer (~200 tokens at gpt-4o's $10/M) spends ~$0.002 and 300 tokens (~$0.003) are reserved up
    # front: two fit in $0.0055, the third is refused. Recorded as $0, the budget would never fill.
    assert statuses[:2] == [200, 200] and statuses[2:] == [429] * 4


def test_a_malformed_stream_chunk_ends_the_stream_with_an_error(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    simulator.state.faults.append(Fault(malformed_chunk_after=1))
    raw = client(gw).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=LONG, stream=True)
    with pytest.raises(openai.APIError, match="malformed"):
        list(raw.parse())
    row = _row(gw, raw.headers)
    assert (row.status, row.status_code) == ("error", 502) and "malformed" in (row.error or "")


def test_requests_refused_before_routing_are_routed_nowhere(gateway_factory, simulator, random_checkpoint) -> None:
    gw = gateway_factory(local_config(simulator.base_url, random_checkpoint))
    with pytest.raises(openai.NotFoundError) as info:
        client(gw).chat.completions.create(model="no-such-model", messages=LONG)
    headers = info.value.response.headers
    assert headers["x-draftgate-route"] == "none" and _row(gw, headers).route == "none"
    client(gw).chat.completions.create(model="local/diffusiongemma", messages=LONG, max_tokens=4)
    flushed_db(gw)
    report = httpx.get(gw.url + "/v1/reports/costs", params={"group_by": "model"},
                       headers={"authorization": f"Bearer {MASTER_KEY}"}).json()
    total = report["total"]
    assert (total["requests"], total["local_requests"], total["hosted_requests"], total["errors"]) == (2, 1, 0, 1)
    assert total["local_share"] == 1.0  # of the requests that were served somewhere
    assert 'route="none"' in httpx.get(gw.url + "/metrics").text


def test_a_local_stream_left_midway_is_charged_what_it_computed(gateway_factory, simulator, random_checkpoint) -> None:
    gw = gateway_factory(local_config(simulator.base_url, random_checkpoint))
    body = {"model": "local/diffusiongemma", "messages": LONG, "stream": True, "max_tokens": 200, "seed": 3}
    with httpx.stream("POST", gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {MASTER_KEY}"},
                      json=body, timeout=30) as response:
        request_id = response.headers["x-draftgate-request-id"]
        for line in response.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                break  # one canvas received (8 tokens of the 200 asked for): the client leaves
    row = None
    for _ in range(100):
        row = flushed_db(gw).get_record(request_id)
        if row is not None:
            break
        __import__("time").sleep(0.05)
    assert row is not None and (row.status, row.route) == ("cancelled", "local")
    assert row.prompt_tokens > 0 and 0 < row.completion_tokens < 200
    assert row.device_seconds > 0 and row.local_cost_usd and row.local_cost_usd > 0
    assert row.detail["unfinished_choices"] == 1


@pytest.mark.parametrize("usage", [
    {"prompt_tokens": -1000000, "completion_tokens": -5, "total_tokens": -1000005},  # a negative bill
    {"prompt_tokens": None, "completion_tokens": None},  # was a silent $0
    {},  # was a silent $0
    {"prompt_tokens": "12", "completion_tokens": 3},  # was a 500 after the upstream had answered
    {"prompt_tokens": 2**40, "completion_tokens": 3},  # over PostgreSQL's integer column: a row set aside
    {"prompt_tokens": 1e300, "completion_tokens": 3},  # was a 500 and a lost row (the journal cannot hold it)
    {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},  # a placeholder: was a silent $0
    {"prompt_tokens": 14, "completion_tokens": 0, "total_tokens": 14},  # no tokens for an answer with text
], ids=["negative", "nulls", "empty", "string", "huge-int", "huge-float", "zeros", "no-completion"])
def test_an_upstream_usage_that_cannot_be_believed_is_counted_here(gateway_factory, simulator, usage) -> None:
    """An upstream's `usage` that is not a pair of plausible non-negative integers is treated as absent: the
    answer is served, priced from counted tokens (`usage_estimated`, `upstream_usage_invalid`), and the
    metrics agree with the ledger — streaming or not."""
    gw = gateway_factory(hosted_config(simulator.base_url))
    simulator.state.faults.append(Fault(usage=usage))
    raw = client(gw).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=LONG)
    assert (raw.parse().choices[0].message.content or "").startswith("echo:")
    simulator.state.faults.append(Fault(usage=usage))
    streamed = client(gw).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=LONG, stream=True, stream_options={"include_usage": True})
    chunks = list(streamed.parse())
    usage_chunks = [c.usage for c in chunks if c.usage is not None]
    for row in (_row(gw, raw.headers), _row(gw, streamed.headers)):
        assert (row.status, row.status_code) == ("ok", 200)
        assert row.prompt_tokens >= 10 and row.completion_tokens > 0
        assert row.hosted_cost_usd and row.hosted_cost_usd > 0
        assert row.detail["usage_estimated"] is True and row.detail["upstream_usage_invalid"] is True
    # the client asked for usage: it gets one usage chunk, the ledger's figures, not the upstream's
    assert [(u.prompt_tokens, u.completion_tokens) for u in usage_chunks] == [(row.prompt_tokens,
                                                                              row.completion_tokens)]
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'draftgate_requests_total{model="gpt-4o-mini",route="hosted",status="ok"} 2.0' in metrics


def test_a_200_whose_body_is_broken_is_billed_though_it_is_retried(gateway_factory, simulator) -> None:
    """A 200 whose body cannot be read (cut short by a proxy): the provider did the work and bills it, so each
    such attempt's prompt is on the row (counted here, `usage_estimated`, the attempt marked `billed`) on top
    of the answer that followed, and on the 502 when none followed — never $0 for calls the provider charged."""
    from router.usage import TokenEstimator

    gw = gateway_factory(hosted_config(simulator.base_url))
    services = gw.services
    mini, backup = services.hosted.get("gpt-4o-mini"), services.hosted.get("backup")
    counted = TokenEstimator().prompt_tokens("openai/gpt-4o-mini", LONG)
    simulator.state.faults.append(Fault(broken_body=True))
    raw = client(gw).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=LONG)
    answer = raw.parse()
    assert answer.usage is not None
    row = _row(gw, raw.headers)
    assert [(a["status_code"], a.get("billed")) for a in row.detail["attempts"]] == [(502, True), (200, None)]
    assert row.prompt_tokens == answer.usage.prompt_tokens + counted
    assert row.hosted_cost_usd == pytest.approx(
        services.pricing.hosted_cost(mini, answer.usage.prompt_tokens, answer.usage.completion_tokens)
        + services.pricing.hosted_cost(mini, counted, 0))
    assert row.detail["usage_estimated"] is True

    simulator.state.faults.extend([Fault(broken_body=True)] * 4)  # gpt-4o-mini's 3 tries, then backup's 1
    with pytest.raises(openai.APIStatusError) as info:
        client(gw).chat.completions.create(model="gpt-4o-mini", messages=LONG)
    assert info.value.status_code == 502
    row = _row(gw, info.value.response.headers)
    assert (row.status, row.status_code, row.prompt_tokens) == ("error", 502, 4 * counted)
    assert row.hosted_cost_usd == pytest.approx(3 * services.pricing.hosted_cost(mini, counted, 0)
                                                + services.pricing.hosted_cost(backup, counted, 0))


def test_an_unpriced_billed_attempt_keeps_the_known_part_as_the_cascade_does(gateway_factory, simulator) -> None:
    """A request whose billed attempts are partly unpriced is unpriced (never summed as $0), and its hosted
    dollars column keeps the part that is known, on the hosted route as on a cascade's (`add_hosted_cost`)."""
    from router.usage import TokenEstimator

    extra = f"""\
  - name: mystery
    model: openai/mystery-model-9000
    api_base: {simulator.base_url}
    max_retries: 0
    fallbacks: [gpt-4o-mini]
"""
    gw = gateway_factory(hosted_config(simulator.base_url).replace("local:\n", extra + "local:\n", 1))
    services = gw.services
    mini = services.hosted.get("gpt-4o-mini")
    counted = TokenEstimator().prompt_tokens("openai/gpt-4o-mini", LONG)
    simulator.state.faults.append(Fault(broken_body=True))  # mystery's one try: billed, at no known price
    raw = client(gw).chat.completions.with_raw_response.create(model="mystery", messages=LONG)
    answer = raw.parse()
    assert answer.usage is not None and raw.headers["x-draftgate-cost-usd"] == "unpriced"
    row = _row(gw, raw.headers)
    assert row.unpriced and row.cost_usd is None
    assert row.hosted_cost_usd == pytest.approx(
        services.pricing.hosted_cost(mini, answer.usage.prompt_tokens, answer.usage.completion_tokens))

    simulator.state.faults.extend([Fault(broken_body=True)] * 2)  # mystery's try, then gpt-4o-mini's first
    raw = client(gw).chat.completions.with_raw_response.create(model="mystery", messages=LONG)
    answer = raw.parse()
    assert answer.usage is not None
    row = _row(gw, raw.headers)  # the billed attempts partly priced: their known part is on the row too
    assert row.unpriced and row.cost_usd is None
    assert row.hosted_cost_usd == pytest.approx(
        services.pricing.hosted_cost(mini, answer.usage.prompt_tokens, answer.usage.completion_tokens)
        + services.pricing.hosted_cost(mini, counted, 0))

    simulator.state.faults.extend([Fault(broken_body=True)] * 4)  # mystery's try, then gpt-4o-mini's 3
    with pytest.raises(openai.APIStatusError) as info:
        client(gw).chat.completions.create(model="mystery", messages=LONG)
    row = _row(gw, info.value.response.headers)
    assert row.status_code == 502 and row.unpriced and row.cost_usd is None
    assert row.hosted_cost_usd == pytest.approx(3 * services.pricing.hosted_cost(mini, counted, 0))
