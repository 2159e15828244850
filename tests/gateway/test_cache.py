"""The exact-match response cache: a repeated request is answered from the ledger database without calling a model,
billed $0 with its savings in the reports, and never across tenants, from an error or from an unfinished stream."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk
from sqlalchemy import text

import policies
from gateway.cache import replayed
from gateway.simulator import Fault
from policies import ConfigError
from tests.conftest import MASTER_KEY, hosted_config
from tests.gateway.test_chat_hosted import client, flushed_db

CACHE = "cache:\n  enabled: true\n"
MSG = [{"role": "user", "content": "what is the capital of France"}]
TEAM_KEYS = {"DRAFTGATE_TEST_KEY_A1": "sk-team-a-one-1234", "DRAFTGATE_TEST_KEY_A2": "sk-team-a-two-1234",
             "DRAFTGATE_TEST_KEY_B": "sk-team-b-only-1234", "DRAFTGATE_TEST_KEY_SOLO": "sk-no-team-solo-1234"}
TEAMS = """teams:
  - name: alpha
    rpm_limit: 4
  - name: beta
keys:
  - {name: a1, key: os.environ/DRAFTGATE_TEST_KEY_A1, team: alpha}
  - {name: a2, key: os.environ/DRAFTGATE_TEST_KEY_A2, team: alpha}
  - {name: b, key: os.environ/DRAFTGATE_TEST_KEY_B, team: beta}
  - {name: solo, key: os.environ/DRAFTGATE_TEST_KEY_SOLO}
"""


def _settled(gw) -> None:  # type: ignore[no-untyped-def]
    """Waits until the answers the gateway is storing are written (they are stored after the response)."""
    deadline = time.monotonic() + 10
    while gw.services.cache.pending and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not gw.services.cache.pending


def _ask(gw, key: str = MASTER_KEY, **body: Any) -> tuple[Any, dict[str, str]]:  # type: ignore[no-untyped-def]
    raw = client(gw, key).chat.completions.with_raw_response.create(
        **{"model": "gpt-4o-mini", "messages": MSG, **body})
    answer = raw.parse()
    _settled(gw)
    return answer, dict(raw.headers)


def _stream(gw, key: str = MASTER_KEY, **body: Any) -> tuple[str, list[Any], dict[str, str]]:  # type: ignore[no-untyped-def]
    raw = client(gw, key).chat.completions.with_raw_response.create(
        **{"model": "gpt-4o-mini", "messages": MSG, "stream": True, **body})
    chunks = list(raw.parse())
    _settled(gw)
    text_out = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text_out, chunks, dict(raw.headers)


def _calls(simulator) -> int:  # type: ignore[no-untyped-def]
    return sum(r.path.endswith("/chat/completions") for r in simulator.state.received)


def test_off_by_default_the_cache_is_never_read_and_its_field_never_relayed(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    assert gw.services.cache is None and gw.services.pipeline._cache is None
    for _ in range(2):
        raw = client(gw).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MSG, extra_body={"cache": {"ttl": 60}})
        assert "x-draftgate-cache" not in raw.headers and raw.headers["x-draftgate-route"] == "hosted"
    assert _calls(simulator) == 2 and all("cache" not in r.body for r in simulator.state.received)
    with flushed_db(gw).engine.connect() as connection:
        assert connection.execute(text("SELECT COUNT(*) FROM response_cache")).scalar_one() == 0


def test_a_repeated_request_is_answered_from_the_cache_streamed_or_not(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url, CACHE))
    first, headers = _ask(gw)
    assert headers["x-draftgate-cache"] == "miss" and headers["x-draftgate-route"] == "hosted"
    again, headers = _ask(gw, user="someone-else", metadata={"app": "faq"})  # who asks is not in the key
    assert headers["x-draftgate-cache"] == "hit" and headers["x-draftgate-route"] == "cache"
    assert headers["x-draftgate-cost-usd"] == "0.00000000" and _calls(simulator) == 1
    assert again.choices[0].message.content == first.choices[0].message.content
    assert again.usage.prompt_tokens == first.usage.prompt_tokens  # the answer's own usage
    assert again.id == f"chatcmpl-{headers['x-draftgate-request-id']}" != first.id  # a fresh id, as documented

    # stored from a non-stream, replayed as a stream (with its usage chunk)
    streamed, chunks, headers = _stream(gw, stream_options={"include_usage": True})
    assert headers["x-draftgate-cache"] == "hit" and streamed == first.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == first.usage.completion_tokens and not chunks[-1].choices
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop" and _calls(simulator) == 1

    # stored from a stream, served to a non-stream and to a stream without a usage chunk
    other = [{"role": "user", "content": "name three primes"}]
    streamed, _, headers = _stream(gw, messages=other)
    assert headers["x-draftgate-cache"] == "miss" and _calls(simulator) == 2
    answer, headers = _ask(gw, messages=other)
    assert headers["x-draftgate-cache"] == "hit" and answer.choices[0].message.content == streamed
    assert answer.choices[0].finish_reason == "stop" and answer.usage.completion_tokens > 0
    again_streamed, chunks, headers = _stream(gw, messages=other)
    assert again_streamed == streamed and all(c.usage is None for c in chunks) and _calls(simulator) == 2
    assert all("cache" not in r.body for r in simulator.state.received)  # never relayed


def test_a_tool_call_answer_replays_as_openai_streams_it() -> None:
    """The openai SDK's stream accumulator, fed the replay of a stored tool-call answer, builds the message the JSON
    answer has: content null (the replay opened every choice with content "", as for text), the call whole."""
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    stored = {"id": "chatcmpl-x", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": None, "refusal": None,
                                                   "tool_calls": [call]},
                           "logprobs": None, "finish_reason": "tool_calls"},
                          {"index": 1, "message": {"role": "assistant", "content": "It is sunny.", "refusal": None},
                           "logprobs": None, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}

    async def accumulate() -> Any:
        state = ChatCompletionStreamState()
        async for payload in replayed(stored, wants_usage=True):
            state.handle_chunk(ChatCompletionChunk.model_validate(json.loads(payload)))
        return state.get_final_completion()

    final = asyncio.run(accumulate())
    tool, text = final.choices
    assert tool.message.content is None and tool.finish_reason == "tool_calls"
    assert [c.function.name for c in tool.message.tool_calls or []] == ["get_weather"]
    assert tool.message.tool_calls[0].function.arguments == '{"city":"Paris"}'  # type: ignore[index]
    assert text.message.content == "It is sunny." and final.usage is not None and final.usage.total_tokens == 12


def test_anything_that_changes_the_answer_is_a_different_entry(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url, CACHE))
    _ask(gw)
    variants: list[dict[str, Any]] = [{"temperature": 0.5}, {"max_tokens": 9}, {"stop": ["x"]}, {"seed": 3},
                                      {"n": 2}, {"model": "backup"}, {"response_format": {"type": "json_object"}},
                                      {"messages": [*MSG, {"role": "assistant", "content": "Paris"}, *MSG]}]
    for variant in variants:
        _, headers = _ask(gw, **variant)
        assert headers["x-draftgate-cache"] == "miss", variant
    assert _calls(simulator) == 1 + len(variants)
    for variant in variants:  # and each was stored under its own key
        assert _ask(gw, **variant)[1]["x-draftgate-cache"] == "hit", variant


def test_a_field_sent_with_its_default_is_the_same_entry(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url, CACHE))
    _ask(gw)  # the openai SDK leaves defaults out; LangChain's ChatOpenAI sends n: 1, others logprobs: false
    for same in ({"n": 1}, {"logprobs": False}, {"presence_penalty": 0, "frequency_penalty": 0.0}):
        assert _ask(gw, **same)[1]["x-draftgate-cache"] == "hit", same
    assert _calls(simulator) == 1
    _ask(gw, n=1, messages=[{"role": "user", "content": "stored with n: 1"}])  # and the other way round
    assert _ask(gw, messages=[{"role": "user", "content": "stored with n: 1"}])[1]["x-draftgate-cache"] == "hit"
    for different in ({"presence_penalty": 0.5}, {"logprobs": True}, {"temperature": 1}):
        assert _ask(gw, **different)[1]["x-draftgate-cache"] == "miss", different


def test_no_cache_no_store_and_ttl(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url, CACHE))
    _ask(gw)
    _, headers = _ask(gw, extra_body={"cache": {"no-cache": True}})  # not read (an answer still stored)
    assert headers["x-draftgate-cache"] == "skip" and _calls(simulator) == 2
    fresh = [{"role": "user", "content": "do not keep this"}]
    assert _ask(gw, messages=fresh, extra_body={"cache": {"no-store": True}})[1]["x-draftgate-cache"] == "miss"
    assert _ask(gw, messages=fresh)[1]["x-draftgate-cache"] == "miss" and _calls(simulator) == 4  # was not stored
    assert _ask(gw, messages=fresh)[1]["x-draftgate-cache"] == "hit"

    short = [{"role": "user", "content": "keep this one second"}]
    _ask(gw, messages=short, extra_body={"cache": {"ttl": 1}})
    assert _ask(gw, messages=short)[1]["x-draftgate-cache"] == "hit"
    too_old = {"cache": {"s-maxage": 0, "no-store": True}}  # only an entry this fresh will do (and keep the old one)
    assert _ask(gw, messages=short, extra_body=too_old)[1]["x-draftgate-cache"] == "miss"
    time.sleep(1.1)  # past the entry's own ttl: expired, not served, and replaced
    calls = _calls(simulator)
    assert _ask(gw, messages=short)[1]["x-draftgate-cache"] == "miss" and _calls(simulator) == calls + 1

    for bad, param in (({"ttl": 0}, "cache.ttl"), ({"no-cache": "yes"}, "cache.no-cache"),
                       ({"namespace": "x"}, "cache.namespace"), ("true", "cache")):
        response = httpx.post(gw.base_url + "/chat/completions", headers={"authorization": f"Bearer {MASTER_KEY}"},
                              json={"model": "gpt-4o-mini", "messages": MSG, "cache": bad})
        assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text


def test_one_tenant_never_gets_anothers_answer(gateway_factory, simulator, monkeypatch) -> None:
    for name, value in TEAM_KEYS.items():
        monkeypatch.setenv(name, value)
    gw = gateway_factory(hosted_config(simulator.base_url, CACHE + TEAMS))
    a1, a2, b, solo = TEAM_KEYS.values()
    assert _ask(gw, a1)[1]["x-draftgate-cache"] == "miss"
    assert _ask(gw, a2)[1]["x-draftgate-cache"] == "hit"  # the same team shares its answers
    for other in (b, solo, MASTER_KEY):  # another team, a key without one, the master key: each its own scope
        assert _ask(gw, other)[1]["x-draftgate-cache"] == "miss", other
    assert _ask(gw, solo)[1]["x-draftgate-cache"] == "hit" and _calls(simulator) == 4


def test_errors_and_unfinished_streams_are_never_stored(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url, CACHE))
    simulator.state.faults.append(Fault(status=400, message="bad request upstream"))
    with pytest.raises(openai.BadRequestError):
        _ask(gw)
    simulator.state.faults.extend([Fault(break_stream_after=1)])
    with pytest.raises(openai.APIError):
        _stream(gw)
    # a client that leaves mid-stream (the upstream still streaming) and one that leaves before the first byte
    simulator.state.faults.append(Fault(stall_stream_after=1, stall_s=1.5))
    _leave_stream_after_first_chunk(gw)
    simulator.state.faults.append(Fault(delay_s=1.5))
    _leave_stream_after_first_chunk(gw, wait_s=0.3)
    time.sleep(1.8)  # both requests have ended on the gateway
    _settled(gw)
    assert gw.services.cache._store.count() == 0
    calls = _calls(simulator)
    assert _ask(gw)[1]["x-draftgate-cache"] == "miss" and _calls(simulator) == calls + 1


def _leave_stream_after_first_chunk(gw, wait_s: float | None = None) -> None:  # type: ignore[no-untyped-def]
    data = json.dumps({"model": "gpt-4o-mini", "messages": MSG, "stream": True}).encode()
    host, port = gw.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as connection:
        connection.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                           + f"authorization: Bearer {MASTER_KEY}\r\ncontent-length: {len(data)}\r\n\r\n".encode()
                           + data)
        if wait_s is not None:
            time.sleep(wait_s)
            return
        connection.settimeout(5)
        received = b""
        while b"data: " not in received:
            received += connection.recv(4096)


def test_a_hit_is_one_ledger_row_at_no_cost_with_its_savings_reported(gateway_factory, simulator,
                                                                        monkeypatch) -> None:
    for name, value in TEAM_KEYS.items():
        monkeypatch.setenv(name, value)
    gw = gateway_factory(hosted_config(simulator.base_url, CACHE + TEAMS))
    key = TEAM_KEYS["DRAFTGATE_TEST_KEY_A1"]
    _, miss = _ask(gw, key)
    _, hit = _ask(gw, key)
    _stream(gw, key)  # a second hit, streamed
    db = flushed_db(gw)
    source = db.get_record(miss["x-draftgate-request-id"])
    row = db.get_record(hit["x-draftgate-request-id"])
    assert source is not None and row is not None and source.hosted_cost_usd
    assert (row.route, row.status_code, row.hosted_cost_usd, row.local_cost_usd) == ("cache", 200, 0.0, 0.0)
    assert (row.prompt_tokens, row.completion_tokens) == (source.prompt_tokens, source.completion_tokens)
    assert row.reference_cost_usd == pytest.approx(source.hosted_cost_usd) and not row.unpriced
    assert row.detail["cache"] == {"source_request_id": source.request_id} and row.team == "alpha"
    report = httpx.get(gw.url + "/v1/reports/costs", params={"group_by": "route"},
                       headers={"authorization": f"Bearer {MASTER_KEY}"}).json()
    total = report["total"]
    assert (total["requests"], total["hosted_requests"], total["cache_requests"]) == (3, 1, 2)
    assert total["cost_usd"] == pytest.approx(source.hosted_cost_usd)
    assert total["savings_usd"] == pytest.approx(2 * source.hosted_cost_usd)  # each hit saved what the call cost
    assert {r["group"] for r in report["rows"]} == {"hosted", "cache"}
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'draftgate_requests_total{model="gpt-4o-mini",route="cache",status="ok"} 2.0' in metrics
    # rpm counts a hit (alpha allows 4 a minute: three were served, one more is), dollars do not
    assert _ask(gw, key)[1]["x-draftgate-cache"] == "hit"
    with pytest.raises(openai.RateLimitError) as refused:
        _ask(gw, key)
    assert "x-draftgate-cache" not in refused.value.response.headers  # a refusal was not answered from the cache
    with db.engine.connect() as connection:
        spent = connection.execute(text("SELECT metric, used, reserved FROM budget_usage WHERE scope = 'team:alpha'"))
        usage = {metric: (used, reserved) for metric, used, reserved in spent}
    assert usage["requests"][0] == 4


def test_max_entries_evicts_the_oldest(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url, CACHE + "  max_entries: 2\n"))
    prompts = [[{"role": "user", "content": f"question {i}"}] for i in range(3)]
    for messages in prompts:
        _ask(gw, messages=messages)
    assert gw.services.cache._store.count() == 2
    assert _ask(gw, messages=prompts[2])[1]["x-draftgate-cache"] == "hit"
    assert _ask(gw, messages=prompts[0])[1]["x-draftgate-cache"] == "miss"  # the oldest was evicted


def test_a_bad_cache_block_is_a_located_config_error(tmp_path: Path) -> None:
    bad = "cache:\n  enabled: true\n  ttl_s: 0\n  max_entry: 5\n"
    with pytest.raises(ConfigError) as info:
        policies.load_text(bad, {}, "draftgate.yaml")
    found = [str(p) for p in info.value.problems]
    assert any(p.startswith("draftgate.yaml:3: cache.ttl_s:") for p in found), found
    assert any(p.startswith("draftgate.yaml:4: cache.max_entry:") for p in found), found
    with pytest.raises(ConfigError) as info:
        policies.load_text("cache: true\n", {}, "draftgate.yaml")
    assert str(info.value.problems[0]).startswith("draftgate.yaml:1: cache:")
    (tmp_path / "draftgate.yaml").write_text("cache: {enabled: true, ttl_s: 600, max_entries: 1000}\n"
                                             "local: {enabled: false}\n")
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "check-config", "draftgate.yaml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    (tmp_path / "draftgate.yaml").write_text(bad)
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "check-config", "draftgate.yaml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "draftgate.yaml:3: cache.ttl_s:" in result.stderr, result.stderr


def test_a_local_answer_is_stored_and_its_hit_priced_as_the_local_row_was(gateway_factory, simulator,
                                                                          random_checkpoint) -> None:
    from tests.gateway.test_local_route import local_config

    gw = gateway_factory(local_config(simulator.base_url, random_checkpoint, CACHE))
    local = {"model": "local/diffusiongemma", "messages": [{"role": "user", "content": "What is 2 + 2?"}],
             "max_tokens": 12, "seed": 7}
    streamed, _, miss = _stream(gw, **local)
    assert miss["x-draftgate-cache"] == "miss" and miss["x-draftgate-route"] == "local"
    answer, hit = _ask(gw, **local)
    assert hit["x-draftgate-cache"] == "hit" and answer.choices[0].message.content == streamed
    assert answer.model_extra["draftgate"]["confidence"]["steps_per_canvas"]  # the draft's signals, kept
    assert answer.model_extra["draftgate"]["cache"] == {"source_request_id": miss["x-draftgate-request-id"]}
    db = flushed_db(gw)
    source, row = db.get_record(miss["x-draftgate-request-id"]), db.get_record(hit["x-draftgate-request-id"])
    assert source is not None and row is not None and source.local_cost_usd and source.reference_cost_usd
    assert (row.route, row.local_cost_usd, row.device_seconds) == ("cache", 0.0, 0.0)
    assert row.reference_cost_usd == pytest.approx(source.reference_cost_usd)
    assert answer.usage.completion_tokens == source.completion_tokens == row.completion_tokens
    assert simulator.state.received == []
