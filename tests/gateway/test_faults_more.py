"""Faults test_faults.py does not cover: an error event inside an upstream stream, a client that hangs up
mid-stream, and a saturated local engine, all through the real gateway and the openai SDK."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import httpx
import openai
import pytest

from gateway.simulator import Fault
from tests.conftest import MASTER_KEY, hosted_config
from tests.gateway.test_chat_hosted import client, flushed_db
from tests.gateway.test_local_route import local_config
from tests.support.processes import MASTER_KEY as PROC_MASTER_KEY
from tests.support.processes import GatewayProcess, process_config
from tests.support.servers import simulator_server


def test_an_error_event_mid_stream_ends_the_stream_with_an_error_and_is_recorded(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    simulator.state.faults.append(Fault(error_in_stream_after=2, message="overloaded mid-answer"))
    received: list[str] = []
    with pytest.raises(openai.APIError) as info, client(gw).chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "a b c d e f"}], stream=True) as response:
        request_id = response.headers["x-draftgate-request-id"]
        for chunk in response.parse():
            received += [c.delta.content or "" for c in chunk.choices]
    assert "overloaded mid-answer" in str(info.value)
    assert "echo: a b c d e f".startswith("".join(received)) and "".join(received) != "echo: a b c d e f"
    assert len(simulator.state.received) == 1  # never retried once bytes went out
    row = flushed_db(gw).get_record(request_id)
    assert row is not None and row.status == "error" and "overloaded mid-answer" in (row.error or "")


def test_a_client_hanging_up_mid_stream_is_recorded_as_cancelled(tmp_path: Path) -> None:
    # a real `draftgate serve` (uvloop + httptools): how production notices a client going away
    with simulator_server() as sim:
        sim.state.replies.append(" ".join(["word"] * 200_000))  # long enough to still be streaming
        config = tmp_path / "draftgate.yaml"
        config.write_text(process_config(sim.base_url, timeout_s=30))
        gw = GatewayProcess(config, tmp_path / "data", tmp_path / "gateway.log")
        try:
            gw.start()
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "long"}], "stream": True}
            with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, timeout=30,
                              headers={"authorization": f"Bearer {PROC_MASTER_KEY}"}) as response:
                request_id = response.headers["x-draftgate-request-id"]
                assert next(response.iter_lines()).startswith("data: ")
            ok = httpx.post(gw.url + "/v1/chat/completions", timeout=30,
                            headers={"authorization": f"Bearer {PROC_MASTER_KEY}"},
                            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]})
            assert ok.status_code == 200  # the gateway is fine afterwards
            gw.terminate()
        finally:
            gw.stop()
    db = gw.database()
    row = db.get_record(request_id)
    db.dispose()
    assert row is not None and (row.status, row.status_code) == ("cancelled", 499), (row.status, row.error)
    assert row.stream and row.provider_model == "openai/gpt-4o-mini"
    assert row.latency_ms < 10_000  # noticed at once, not when the 200,000-word answer would have ended


def test_a_saturated_local_engine_answers_429_with_retry_after(gateway_factory, simulator, random_checkpoint) -> None:
    config = local_config(simulator.base_url, random_checkpoint).replace(
        "  max_tokens: 24\n", "  max_tokens: 24\n  max_queue: 1\n  max_batch_size: 1\n")
    assert "max_queue: 1" in config
    gw = gateway_factory(config)
    body = {"model": "local/diffusiongemma", "messages": [{"role": "user", "content": "Sort: 3, 1"}],
            "max_tokens": 24, "seed": 1}

    def call(i: int) -> httpx.Response:  # every other request streams: it is refused before its first byte too
        return httpx.post(gw.url + "/v1/chat/completions", json={**body, "stream": i % 2 == 1}, timeout=60,
                          headers={"authorization": f"Bearer {MASTER_KEY}"})

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        replies = list(pool.map(call, range(12)))
    statuses = sorted(r.status_code for r in replies)
    assert 200 in statuses and 429 in statuses and set(statuses) <= {200, 429}, statuses
    streamed = replies[1::2]
    assert any(r.status_code == 429 for r in streamed), [r.status_code for r in streamed]
    assert all("error" not in r.text for r in streamed if r.status_code == 200)  # never an in-band refusal
    refused = next(r for r in replies if r.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "local_queue_full"
    assert set(refused.json()["error"]) == {"message", "type", "param", "code"}
    row = flushed_db(gw).get_record(refused.headers["x-draftgate-request-id"])
    assert row is not None and row.status == "error" and row.status_code == 429


def test_choices_refused_by_a_full_queue_give_their_places_back(gateway_factory, simulator, random_checkpoint) -> None:
    """A long prompt (prepared off the event loop) streamed with n = 2 while the batch is busy: its second
    choice finds the queue full (429) and its first choice's stream is closed before its preparation ever ran.
    That place was never given back: the idle engine then refused the same request's second choice, which
    took another place, and from then on answered 429 to every request until a restart."""
    config = local_config(simulator.base_url, random_checkpoint).replace(
        "  max_tokens: 24\n", "  max_tokens: 512\n  max_queue: 1\n  max_batch_size: 1\n")
    gw = gateway_factory(config)
    user = [{"role": "user", "content": "Sort: 3, 1"}]
    long = [{"role": "user", "content": "Sort these numbers: " + "123456789 " * 220}]  # 2,220 characters

    def ask(messages: list[dict[str, str]], n: int = 1, stream: bool = False) -> list[str | None]:
        reply = client(gw).chat.completions.create(model="local/diffusiongemma", messages=messages,  # type: ignore[call-overload]
                                                   n=n, max_tokens=8, stream=stream)
        if not stream:
            return [c.finish_reason for c in reply.choices]
        return [c.choices[0].finish_reason for c in reply if c.choices and c.choices[0].finish_reason]

    with client(gw).chat.completions.create(model="local/diffusiongemma", messages=user, stream=True,
                                            max_tokens=512, seed=1) as running:  # random weights: no EOS
        next(iter(running))  # its row is in the batch: the batch's one place is taken
        for stream in (True, False):
            with pytest.raises(openai.RateLimitError) as info:
                ask(long, n=2, stream=stream)
            assert info.value.code == "local_queue_full"
    engine = gw.services.local
    deadline = time.monotonic() + 10
    while engine._active and time.monotonic() < deadline:  # the closed stream's row leaves at the next tick
        time.sleep(0.01)
    assert ask(long, n=2, stream=True) == ["length", "length"]  # the idle engine holds both choices
    assert ask(user) == ["length"] and ask(long) == ["length"]


def test_a_local_answer_failing_midway_is_billed_what_it_used_streamed_or_not(gateway_factory, simulator) -> None:
    # The vLLM server drops the connection after a few chunks: the device time and tokens spent are on the
    # failed request's row whether the client streamed or not (a non-streaming row said $0, 0 tokens).
    pool = f"local:\n  enabled: true\n  backend: vllm\n  api_base: {simulator.base_url}\n"
    gw = gateway_factory(hosted_config(simulator.base_url, local=True).replace("local:\n  enabled: true\n", pool))
    simulator.state.chunk_words = 1
    body = {"model": "local/diffusiongemma", "messages": [{"role": "user", "content": "one two three four"}]}
    headers = {"authorization": f"Bearer {MASTER_KEY}"}
    for stream in (False, True):
        simulator.state.faults.append(Fault(break_stream_after=3, delay_s=0.05))
        reply = httpx.post(gw.url + "/v1/chat/completions", json={**body, "stream": stream}, headers=headers,
                           timeout=30)
        if stream:
            assert reply.status_code == 200 and "stream_interrupted" in reply.text
        else:
            assert reply.status_code == 503 and reply.json()["error"]["code"] == "local_unavailable"
        row = flushed_db(gw).get_record(reply.headers["x-draftgate-request-id"])
        assert row is not None and row.status == "error" and row.stream == stream
        assert row.completion_tokens == 3 and row.prompt_tokens == 4, (stream, row)  # "echo: one two" of five
        assert row.device_seconds > 0.04 and row.local_cost_usd is not None and row.local_cost_usd > 0


def test_a_vllm_pool_fails_over_and_a_dead_pool_is_503_before_the_stream(gateway_factory, simulator) -> None:
    pool = f"local:\n  enabled: true\n  backend: vllm\n  api_base: [http://127.0.0.1:9/v1, {simulator.base_url}]\n"
    gw = gateway_factory(hosted_config(simulator.base_url, local=True).replace("local:\n  enabled: true\n", pool))
    body = {"model": "local/diffusiongemma", "messages": [{"role": "user", "content": "Sort: 3, 1"}]}
    headers = {"authorization": f"Bearer {MASTER_KEY}"}
    answer = client(gw).chat.completions.create(**body)  # type: ignore[call-overload]
    assert answer.choices[0].message.content == "echo: Sort: 3, 1"
    chunks = list(client(gw).chat.completions.create(**body, stream=True))  # type: ignore[call-overload]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: Sort: 3, 1"

    dead = "local:\n  enabled: true\n  backend: vllm\n  api_base: [http://127.0.0.1:9/v1]\n"
    gw = gateway_factory(hosted_config(simulator.base_url, local=True).replace("local:\n  enabled: true\n", dead))
    for stream in (False, True):
        reply = httpx.post(gw.url + "/v1/chat/completions", json={**body, "stream": stream}, headers=headers,
                           timeout=30)
        assert reply.status_code == 503, reply.text  # a stream too: refused before its first byte
        assert reply.json()["error"]["code"] == "local_unavailable" and reply.headers["retry-after"]
        row = flushed_db(gw).get_record(reply.headers["x-draftgate-request-id"])
        assert row is not None and row.status == "error" and row.status_code == 503 and row.stream == stream


def test_a_vllm_usage_missing_or_wrong_is_estimated_not_a_500_nor_0_tokens(gateway_factory, simulator) -> None:
    # A server (or a proxy before it) that drops `usage` left a row of 0 tokens (an all-hosted counterfactual of
    # $0), and one with a count that cannot be true (a string, a negative number) was a 500 after the work was
    # done (a negative count recorded an ok row, then the metrics raised): counted here instead, and marked.
    pool = f"local:\n  enabled: true\n  backend: vllm\n  api_base: {simulator.base_url}\n"
    gw = gateway_factory(hosted_config(simulator.base_url, local=True).replace("local:\n  enabled: true\n", pool))
    messages = [{"role": "user", "content": "one two three four"}]  # 18 characters: 4 tokens at 4 a token
    for usage, counted in (({}, (4, 6)), ({"prompt_tokens": "4", "completion_tokens": 5}, (4, 5)),
                           ({"prompt_tokens": 4, "completion_tokens": -1}, (4, 6))):
        simulator.state.faults.extend([Fault(usage=usage), Fault(usage=usage)])
        raw = client(gw).chat.completions.with_raw_response.create(model="local/diffusiongemma", messages=messages)
        answer = raw.parse()
        assert answer.choices[0].message.content == "echo: one two three four"
        assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == counted  # type: ignore[union-attr]
        with client(gw).chat.completions.with_streaming_response.create(
                model="local/diffusiongemma", messages=messages, stream=True,
                stream_options={"include_usage": True}) as response:
            chunks = list(response.parse())
        assert chunks[-1].usage is not None
        assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == counted
        for request_id in (raw.headers["x-draftgate-request-id"], response.headers["x-draftgate-request-id"]):
            row = flushed_db(gw).get_record(request_id)
            assert row is not None and (row.status, row.route) == ("ok", "local"), (usage, row)
            assert (row.prompt_tokens, row.completion_tokens) == counted and row.device_seconds > 0
            assert (row.detail or {}).get("usage_estimated") is True
    answer = client(gw).chat.completions.create(model="local/diffusiongemma", messages=messages)  # reported: kept
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (4, 5)  # type: ignore[union-attr]


def test_a_vllm_refusal_is_relayed_with_the_servers_message(gateway_factory, simulator) -> None:
    # The client read vLLM's whole error JSON inside draftgate's message ('... (400): {"error":{"message":...').
    pool = f"local:\n  enabled: true\n  backend: vllm\n  api_base: {simulator.base_url}\n"
    gw = gateway_factory(hosted_config(simulator.base_url, local=True).replace("local:\n  enabled: true\n", pool))
    message = "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens"
    for stream in (False, True):
        simulator.state.faults.append(Fault(status=400, message=message))
        with pytest.raises(openai.BadRequestError) as info:
            client(gw).chat.completions.create(model="local/diffusiongemma", stream=stream,
                                               messages=[{"role": "user", "content": "hi"}])
        assert info.value.code == "local_rejected"
        assert info.value.message.endswith(f"refused the request (400): {message}"), info.value.message
