"""Cooldowns, as LiteLLM's router has them: an alias whose last `allowed_fails` requests failed (each after
its retries) is skipped for `cooldown_time` seconds, so requests go straight to its fallbacks instead of
waiting out the dead upstream's timeouts and retries; with no alias of the chain left, a 503 with
Retry-After before anything is sent."""

from __future__ import annotations

import time

import httpx

from gateway.simulator import Fault
from tests.conftest import MASTER_KEY, hosted_config
from tests.gateway.test_chat_hosted import client, flushed_db

PRIMARY = "    max_retries: 2\n    fallbacks: [backup]\n"
BACKUP = "    max_retries: 0\nlocal:"


def cooling(sim_url: str, cooldown_time: float) -> str:
    config = hosted_config(sim_url)
    assert PRIMARY in config
    return config.replace(PRIMARY, f"    max_retries: 0\n    allowed_fails: 2\n    cooldown_time: {cooldown_time}\n"
                                   "    fallbacks: [backup]\n")


def ask(gw, model: str = "gpt-4o-mini"):  # type: ignore[no-untyped-def]
    return client(gw).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hi"}])


def test_a_failing_alias_is_skipped_for_its_cooldown_then_tried_again(gateway_factory, simulator) -> None:
    gw = gateway_factory(cooling(simulator.base_url, cooldown_time=1.5))
    simulator.state.faults.extend([Fault(status=503), Fault(), Fault(status=503)])  # primary, backup, primary
    for _ in range(2):  # two failed requests in a row: gpt-4o-mini cools down
        assert ask(gw).parse().choices[0].message.content == "echo: hi"
    sent = [r.body["model"] for r in simulator.state.received]
    assert sent == ["gpt-4o-mini", "gpt-4o", "gpt-4o-mini", "gpt-4o"]

    raw = ask(gw)  # straight to the fallback: the cooling alias is not called
    assert raw.parse().choices[0].message.content == "echo: hi"
    assert [r.body["model"] for r in simulator.state.received][4:] == ["gpt-4o"]
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and row.attempts == 1
    skipped, served = row.detail["attempts"]
    assert (skipped["alias"], skipped["skipped"], skipped["status_code"]) == ("gpt-4o-mini", True, None)
    assert "cooling down" in skipped["error"] and (served["alias"], served["status_code"]) == ("backup", 200)

    time.sleep(1.6)  # the cooldown is over: the alias gets its chance again, and answers
    ask(gw)
    assert [r.body["model"] for r in simulator.state.received][5:] == ["gpt-4o-mini"]


def test_a_chain_with_every_alias_cooling_is_a_503_with_retry_after_before_anything_is_sent(
        gateway_factory, simulator) -> None:
    config = hosted_config(simulator.base_url)
    assert BACKUP in config
    gw = gateway_factory(config.replace(BACKUP, "    max_retries: 0\n    allowed_fails: 2\n    cooldown_time: 30\n"
                                                "local:"))
    simulator.state.faults.extend([Fault(status=503), Fault(status=503)])
    headers = {"authorization": f"Bearer {MASTER_KEY}"}
    body = {"model": "backup", "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(2):
        assert httpx.post(gw.url + "/v1/chat/completions", json=body, headers=headers, timeout=30).status_code == 502
    for stream in (False, True):
        reply = httpx.post(gw.url + "/v1/chat/completions", json={**body, "stream": stream}, headers=headers,
                           timeout=30)
        assert reply.status_code == 503 and reply.json()["error"]["code"] == "upstream_cooling_down", reply.text
        assert 29 <= int(reply.headers["retry-after"]) <= 30
        row = flushed_db(gw).get_record(reply.headers["x-draftgate-request-id"])
        assert row is not None and (row.status, row.status_code) == ("error", 503)
    assert len(simulator.state.received) == 2  # the cooling alias was never called again
    # A request the upstream rejects (400) is the request's fault: it does not count towards a cooldown.
    gw2 = gateway_factory(cooling(simulator.base_url, cooldown_time=30))
    simulator.state.faults.extend([Fault(status=400, message="bad")] * 3)
    for _ in range(3):
        assert httpx.post(gw2.url + "/v1/chat/completions", json={**body, "model": "gpt-4o-mini"}, headers=headers,
                          timeout=30).status_code == 400
    assert ask(gw2).parse().choices[0].message.content == "echo: hi"
    assert simulator.state.received[-1].body["model"] == "gpt-4o-mini"


def test_an_alias_rate_limited_with_retry_after_is_rested_that_long(gateway_factory, simulator) -> None:
    """A 429 whose Retry-After the gateway will not wait out (60 s): the next requests go to the fallback at once,
    without calling the rate-limited alias again before its Retry-After has passed (as LiteLLM cools a deployment
    on a 429). It used to be called again by every request, getting 429s, until `allowed_fails` put it in its
    short cooldown."""
    gw = gateway_factory(hosted_config(simulator.base_url))
    simulator.state.faults.append(Fault(status=429, retry_after_s=60, message="quota: come back in a minute"))
    assert ask(gw).parse().choices[0].message.content == "echo: hi"  # gpt-4o-mini 429, then backup
    raw = ask(gw)
    assert raw.parse().choices[0].message.content == "echo: hi"
    assert [r.body["model"] for r in simulator.state.received] == ["gpt-4o-mini", "gpt-4o", "gpt-4o"]
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and row.detail["attempts"][0]["skipped"] is True
    response = httpx.post(gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {MASTER_KEY}"},
                          json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 200  # through backup, still without calling gpt-4o-mini
    assert len(simulator.state.received) == 4 and simulator.state.received[-1].body["model"] == "gpt-4o"
