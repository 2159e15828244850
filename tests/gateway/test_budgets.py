"""Budgets and rate limits: atomic across two gateway replicas on one database, 429s that say when."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from gateway.simulator import Simulator
from ledger import Database
from tests.support.servers import simulator_server

PRICE_PER_REQUEST = 0.005  # 5 completion tokens at $1,000 per million (prompt tokens are free here)


def budget_config(sim_url: str, db_url: str, team_limits: str = "", key_limits: str = "") -> str:
    return f"""
master_key: os.environ/DRAFTGATE_TEST_MASTER
database_url: "{db_url}"
reference_model: gpt-4o-mini
models:
  - name: gpt-4o-mini
    model: openai/gpt-4o-mini
    api_base: {sim_url}
    api_key: os.environ/DRAFTGATE_TEST_UPSTREAM_KEY
    price: {{input_per_mtok: 0, output_per_mtok: 1000}}
    max_retries: 0
  - name: mystery
    model: openai/no-such-model-anywhere
    api_base: {sim_url}
    api_key: os.environ/DRAFTGATE_TEST_UPSTREAM_KEY
teams:
  - name: racers
    {team_limits}
keys:
  - name: racer
    key: sk-racer-key-123456
    team: racers
    {key_limits}
local:
  enabled: false
"""


async def _call(client: httpx.AsyncClient, url: str, model: str = "gpt-4o-mini") -> httpx.Response:
    return await client.post(f"{url}/v1/chat/completions", headers={"authorization": "Bearer sk-racer-key-123456"},
                             json={"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "go"}]})


def test_two_replicas_cannot_overspend_a_team_budget(gateway_factory, shared_database_url: str, tmp_path: Path) -> None:
    with simulator_server(Simulator(reply_fn=lambda _body: "a b c d e")) as sim:
        yaml_text = budget_config(sim.base_url, shared_database_url, "max_budget_usd: 0.1\n    budget_period: day")
        a = gateway_factory(yaml_text, data_dir=tmp_path / "a")
        b = gateway_factory(yaml_text, data_dir=tmp_path / "b")

        async def race() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=60) as client:
                return await asyncio.gather(*[_call(client, (a if i % 2 else b).url) for i in range(60)])

        responses = asyncio.run(race())
        ok = [r for r in responses if r.status_code == 200]
        refused = [r for r in responses if r.status_code == 429]
        assert len(ok) == 20, [r.status_code for r in responses]  # $0.10 / $0.005: exactly 20, across both
        assert len(refused) == 40
        error = refused[0].json()["error"]
        assert error["code"] == "budget_exceeded" and error["type"] == "budget_exceeded"
        assert "team:racers" in error["message"]
        # Refused while the budget was spent, or while in-flight requests held the rest of it (free a second later)
        for reply in refused:
            message = reply.json()["error"]["message"]
            if "held by requests in flight" in message:
                assert reply.headers["retry-after"] == "1"
            else:
                assert "has reached its dollar budget" in message and "x-draftgate-budget-reset" in reply.headers
        spent_per_gateway = [float(r.headers["x-draftgate-cost-usd"]) for r in ok]
        assert sum(spent_per_gateway) == pytest.approx(0.1)
        for gateway in (a, b):
            gateway.stop()  # drains settlements and flushes the ledger
        db = Database(shared_database_url)
        with db.engine.connect() as connection:
            used, reserved = connection.execute(text(
                "SELECT used, reserved FROM budget_usage WHERE scope = 'team:racers' AND metric = 'usd'")).one()
            ledger_ok, ledger_429, ledger_usd = connection.execute(text(
                "SELECT SUM(CASE WHEN status_code = 200 THEN 1 ELSE 0 END), "
                "SUM(CASE WHEN status_code = 429 THEN 1 ELSE 0 END), SUM(hosted_cost_usd) FROM requests")).one()
        db.dispose()
        assert used == pytest.approx(0.1) and reserved == pytest.approx(0.0)
        assert (ledger_ok, ledger_429) == (20, 40)  # refusals are recorded too, never lost
        with db.engine.connect() as connection:  # ... as served by no route, with the rule that matched
            routes = dict(connection.execute(text(
                "SELECT status_code, MIN(route) || ',' || MAX(route) FROM requests GROUP BY status_code")).all())
        assert routes == {200: "hosted,hosted", 429: "none,none"}
        assert ledger_usd == pytest.approx(0.1)


def test_requests_per_minute_limit_per_key(gateway_factory, shared_database_url: str, tmp_path: Path) -> None:
    with simulator_server(Simulator(reply_fn=lambda _body: "ok")) as sim:
        gw = gateway_factory(budget_config(sim.base_url, shared_database_url, key_limits="rpm_limit: 3"), data_dir=tmp_path / "a")

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=30) as client:
                return [await _call(client, gw.url) for _ in range(5)]

        responses = asyncio.run(burst())
        codes = [r.status_code for r in responses]
        if codes.count(200) < 3:  # the minute turned over mid-burst: the next window allows 3 more
            pytest.fail(f"expected 3 successes in one minute window, got {codes}")
        limited = [r for r in responses if r.status_code == 429]
        assert limited, codes
        error = limited[0].json()["error"]
        assert error["code"] == "rate_limit_exceeded" and "key:config:racer" in error["message"]
        assert 1 <= int(limited[0].headers["retry-after"]) <= 60
        assert limited[0].headers["x-ratelimit-reset-requests"].endswith("s")


def test_a_tokens_per_minute_limit_admits_a_request_without_max_tokens_then_fills(
        gateway_factory, shared_database_url: str, tmp_path: Path) -> None:
    # No max_tokens: 4,096 completion tokens would be reserved, above the 500-token limit. Such a request must
    # still be served while the minute has room (else its client retries a 429 until an empty minute, or
    # forever): it claims what is left. The second is served next to what the first really used (~300).
    with simulator_server(Simulator(reply_fn=lambda _body: "word " * 300)) as sim:
        gw = gateway_factory(budget_config(sim.base_url, shared_database_url, key_limits="tpm_limit: 500"),
                             data_dir=tmp_path / "a")
        while time.time() % 60 > 50:  # not across a minute boundary
            time.sleep(1)

        def call(**extra: int) -> httpx.Response:
            reply = httpx.post(f"{gw.url}/v1/chat/completions", headers={"authorization": "Bearer sk-racer-key-123456"},
                               json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "go"}], **extra},
                               timeout=30)
            asyncio.run_coroutine_threadsafe(gw.services.budgets.drain(), gw.services.loop).result(10)  # settled
            return reply

        # Each claims what the minute has left (not its whole worst case, which would only fit an untouched
        # minute), so requests are served until the minute is really spent; then a true "has reached".
        replies = []
        for _ in range(5):  # ~300 tokens each: the first leaves ~200, which the second claims and overruns
            replies.append(call())
            if replies[-1].status_code == 429:
                break
        codes = [r.status_code for r in replies]
        assert codes == [200, 200, 429], codes
        error = replies[-1].json()["error"]
        assert error["code"] == "rate_limit_exceeded" and 1 <= int(replies[-1].headers["retry-after"]) <= 60
        assert "has reached its tokens-per-minute limit" in error["message"]


def test_a_dollar_budget_refuses_an_unpriced_model(gateway_factory, shared_database_url: str, tmp_path: Path) -> None:
    with simulator_server(Simulator()) as sim:
        gw = gateway_factory(budget_config(sim.base_url, shared_database_url, "max_budget_usd: 5"), data_dir=tmp_path / "a")
        response = asyncio.run(_one(gw.url, "mystery"))
        assert response.status_code == 400
        assert "no known price" in response.json()["error"]["message"]
        assert len(sim.state.received) == 0  # refused before any upstream call


async def _one(url: str, model: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        return await _call(client, url, model)


def test_n_choices_reserve_and_spend_n_completions(gateway_factory, shared_database_url: str, tmp_path: Path) -> None:
    with simulator_server(Simulator(reply_fn=lambda _body: "a b c d e")) as sim:
        gw = gateway_factory(budget_config(sim.base_url, shared_database_url, "max_budget_usd: 0.012"),
                             data_dir=tmp_path / "a")

        async def call(n: int) -> httpx.Response:
            async with httpx.AsyncClient(timeout=30) as client:
                return await client.post(f"{gw.url}/v1/chat/completions",
                                         headers={"authorization": "Bearer sk-racer-key-123456"},
                                         json={"model": "gpt-4o-mini", "max_tokens": 5, "n": n,
                                               "messages": [{"role": "user", "content": "go"}]})

        three = asyncio.run(call(3))  # worst case 3 x 5 tokens = $0.015: over the $0.012 budget
        assert three.status_code == 429 and three.json()["error"]["code"] == "budget_exceeded"
        assert sim.state.received == []
        two = asyncio.run(call(2))
        assert two.status_code == 200 and len(two.json()["choices"]) == 2
        assert float(two.headers["x-draftgate-cost-usd"]) == pytest.approx(2 * PRICE_PER_REQUEST)
        assert asyncio.run(call(1)).status_code == 429  # $0.010 spent: $0.005 more would pass $0.012


def test_failed_requests_leave_no_phantom_spend_and_budgets_say_why_they_refuse(
        gateway_factory, shared_database_url: str, tmp_path: Path) -> None:
    from gateway.simulator import Fault

    with simulator_server(Simulator(reply_fn=lambda _body: "a b c d e")) as sim:
        gw = gateway_factory(budget_config(sim.base_url, shared_database_url, "max_budget_usd: 0.012"),
                             data_dir=tmp_path / "a")
        scope_usage = gw.services.budgets._store.usage  # (used, reserved) of a counter

        def settled(reply: httpx.Response) -> httpx.Response:
            asyncio.run_coroutine_threadsafe(gw.services.budgets.drain(), gw.services.loop).result(10)
            return reply

        def window() -> int:
            from datetime import UTC, datetime

            from ledger.budgets import window as budget_window
            return int(budget_window("month", datetime.now(UTC))[0].timestamp())

        # Upstream failures cost nothing (the ledger says $0): they must not use up the budget either.
        sim.state.faults.extend([Fault(status=500)] * 2)  # (a third would cool the alias down)
        for _ in range(2):
            assert settled(asyncio.run(_one(gw.url, "gpt-4o-mini"))).status_code == 502
        assert scope_usage("team:racers", "usd", window()) == (0.0, 0.0)
        # No max_tokens: a worst case of 4,096 tokens ($4.10) is far above the $0.012 budget, but the budget is
        # empty, so it is served (claiming at most the whole budget) and settled to its real $0.005.
        reply = settled(httpx.post(f"{gw.url}/v1/chat/completions", timeout=30,
                                   headers={"authorization": "Bearer sk-racer-key-123456"},
                                   json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "go"}]}))
        assert reply.status_code == 200, reply.text
        assert scope_usage("team:racers", "usd", window()) == (pytest.approx(PRICE_PER_REQUEST), 0.0)

        # Held by a request in flight, not spent: told so, with a short Retry-After, not "resets next month".
        sim.state.faults.append(Fault(delay_s=1.5))

        async def overlap() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=30) as client:
                slow = asyncio.create_task(_call(client, gw.url))
                await asyncio.sleep(0.7)
                return [await _call(client, gw.url), await slow]

        held, slow = asyncio.run(overlap())
        assert slow.status_code == 200 and held.status_code == 429
        assert "held by requests in flight" in held.json()["error"]["message"]
        assert held.headers["retry-after"] == "1"
        settled(slow)
        full = asyncio.run(_one(gw.url, "gpt-4o-mini"))  # $0.010 spent: $0.005 more does not fit, a smaller one would
        assert full.status_code == 429 and full.json()["error"]["message"].startswith(
            "this request's worst case ($0.005) is more than the $0.002 left of team:racers's dollar budget")
        # Without max_tokens a request claims what is left ($0.002 of $0.012): served while anything is
        # (as LiteLLM admits while spend < budget), then refused with the truth.
        def no_cap() -> httpx.Response:
            return settled(httpx.post(f"{gw.url}/v1/chat/completions", timeout=30,
                                      headers={"authorization": "Bearer sk-racer-key-123456"},
                                      json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "go"}]}))

        assert no_cap().status_code == 200
        spent = no_cap()
        assert spent.status_code == 429 and "has reached its dollar budget" in spent.json()["error"]["message"]


def test_a_refusal_no_wait_can_help_tells_the_openai_sdk_not_to_retry(gateway_factory, tmp_path: Path) -> None:
    """A spent `total` budget never resets and a worst case above the whole budget never fits: their 429s had no
    Retry-After, so the OpenAI SDK retried each twice (1-2 s lost, three refused rows for one call)."""
    import openai

    from tests.gateway.test_chat_hosted import flushed_db

    with simulator_server(Simulator(reply_fn=lambda _body: "a b c d e")) as sim:
        gw = gateway_factory(budget_config(sim.base_url, f"sqlite:///{tmp_path}/l.db",
                                           "max_budget_usd: 0.006\n    budget_period: total"))
        client = openai.OpenAI(base_url=gw.base_url, api_key="sk-racer-key-123456")  # the SDK's default retries
        go = [{"role": "user", "content": "go"}]
        too_big = "more than team:racers's whole dollar budget"
        for max_tokens, expected in ((50, too_big), (5, None), (5, "the budget has no period and never resets")):
            if expected is None:
                client.chat.completions.create(model="gpt-4o-mini", max_tokens=max_tokens, messages=go)
                asyncio.run_coroutine_threadsafe(gw.services.budgets.drain(), gw.services.loop).result(10)
                continue
            with pytest.raises(openai.RateLimitError) as info:
                client.chat.completions.create(model="gpt-4o-mini", max_tokens=max_tokens, messages=go)
            assert expected in info.value.message and info.value.response.headers["x-should-retry"] == "false"
        rows = [(r.status_code, r.route) for r in flushed_db(gw).iter_records()]
        assert sorted(rows) == [(200, "hosted"), (429, "none"), (429, "none")], rows  # one row per call


def test_a_client_that_leaves_while_its_budget_is_reserved_releases_it(gateway_factory, tmp_path: Path) -> None:
    """A client that gave up while the database was slow to reserve (here: another writer holds SQLite's lock)
    left its reservation held for the rest of the month: the team's whole $1 (no max_tokens claims what is left),
    every later request a 429 "held by requests in flight"."""
    import sqlite3

    with simulator_server(Simulator(reply_fn=lambda _body: "a b c d e")) as sim:
        gw = gateway_factory(budget_config(sim.base_url, f"sqlite:///{tmp_path}/l.db", "max_budget_usd: 1"))
        go = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "go"}]}
        auth = {"authorization": "Bearer sk-racer-key-123456"}
        lock = sqlite3.connect(tmp_path / "l.db", isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")  # the reservation waits for the lock (busy_timeout)
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"{gw.url}/v1/chat/completions", headers=auth, json=go, timeout=0.3)
        time.sleep(0.2)  # the gateway sees the disconnect and cancels the request
        lock.execute("ROLLBACK")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            held = lock.execute("SELECT reserved FROM budget_usage WHERE metric = 'usd'").fetchall()
            if held == [(0.0,)]:
                break
            time.sleep(0.05)
        assert held == [(0.0,)]
        lock.close()
        assert httpx.post(f"{gw.url}/v1/chat/completions", headers=auth, json=go, timeout=10).status_code == 200
