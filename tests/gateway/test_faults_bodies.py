"""Upstream answers that are 200s, and parse, but are not what an OpenAI client can use: never relayed as a
success; and error events however the upstream words them end the stream with that error."""

from __future__ import annotations

import time

import openai
import pytest

from gateway.simulator import Fault
from tests.conftest import hosted_config
from tests.gateway.test_chat_hosted import client, flushed_db
from tests.gateway.test_faults import ask

PROMPT = [{"role": "user", "content": "Tell me about the weather in Oslo in three sentences, please."}]


@pytest.mark.parametrize("body", [b'{"id":"x","object":"chat.completion","choices":null}',
                                  b'{"id":"x","object":"chat.completion","choices":"nothing"}',
                                  b'{"id":"x","object":"chat.completion","choices":[]}',
                                  b'{"id":"x","object":"chat.completion","choices":[null]}',
                                  b'{"id":"x","object":"chat.completion","choices":[{"index":0}]}'])
def test_a_200_whose_choices_are_unusable_is_retried_and_billed_like_a_broken_body(gateway_factory, simulator,
                                                                                   body: bytes) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    simulator.state.faults.append(Fault(body=body))
    raw = client(gw).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=PROMPT)
    answer = raw.parse()
    assert answer.choices[0].message.content == "echo: " + PROMPT[0]["content"]
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and row.status == "ok"
    assert [(a["status_code"], a.get("billed")) for a in row.detail["attempts"]] == [(502, True), (200, None)]
    assert row.detail["usage_estimated"] is True


@pytest.mark.parametrize("event", [b'{ "error": {"message": "overloaded mid-answer", "type": "server_error"}}',
                                   b'{"object":"error","error":{"message":"overloaded mid-answer"}}',
                                   b'{"object":"error","message":"overloaded mid-answer","type":"InternalServerError",'
                                   b'"code":500}'])
def test_an_error_event_worded_otherwise_still_ends_the_stream_with_its_error(gateway_factory, simulator,
                                                                              event: bytes) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    simulator.state.faults.append(Fault(error_in_stream_after=2, error_payload=event))
    received: list[dict] = []
    with pytest.raises(openai.APIError) as info, client(gw).chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=PROMPT, stream=True) as response:
        request_id = response.headers["x-draftgate-request-id"]
        for chunk in response.parse():
            received.append(chunk.model_dump())
    assert "overloaded mid-answer" in str(info.value)
    assert all(c.get("choices") is not None for c in received)  # the error event itself was not relayed as a chunk
    row = flushed_db(gw).get_record(request_id)
    assert row is not None and row.status == "error" and "overloaded mid-answer" in (row.error or "")


@pytest.mark.parametrize("retry_after", ["soon", "inf", "1e400"])
def test_a_retry_after_that_is_no_number_of_seconds_does_not_break_the_request(gateway_factory, simulator,
                                                                               retry_after: str) -> None:
    """`Retry-After: soon` (neither seconds nor an HTTP date) was a 500 with nothing recorded about the upstream;
    `inf` rested the alias for ever and made the gateway's own 429 a 500 (it could not round infinity)."""
    gw = gateway_factory(hosted_config(simulator.base_url))
    simulator.state.faults.append(Fault(status=503, retry_after_s=retry_after))
    raw = ask(gw, "after a 503")
    assert raw.parse().choices[0].message.content == "echo: after a 503"
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and [a["status_code"] for a in row.detail["attempts"]] == [503, 200]

    simulator.state.faults.extend([Fault(status=429, retry_after_s=retry_after)] * 4)  # the alias's 3, backup's 1
    with pytest.raises(openai.RateLimitError) as info:
        client(gw).with_options(max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "limited"}])
    assert 1 <= int(info.value.response.headers["retry-after"]) <= 86400
    simulator.state.faults.clear()
    time.sleep(1.1)
    assert ask(gw, "later").parse().choices[0].message.content == "echo: later"  # no alias rests for ever


def test_a_redirect_or_other_non_error_status_is_the_upstreams_fault_not_the_clients(gateway_factory,
                                                                                    simulator) -> None:
    """An upstream answering 301 or 302 (an `http://` api_base a provider redirects to https) is misconfigured or
    misbehaving: its fallback answers; with none left, a 502. It was a 400 `upstream_rejected`, blaming the
    client's request, and the fallbacks were never tried."""
    gw = gateway_factory(hosted_config(simulator.base_url))
    simulator.state.faults.append(Fault(status=301, message="Moved Permanently"))
    raw = ask(gw, "redirected")
    assert raw.parse().choices[0].message.content == "echo: redirected"
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and [(a["alias"], a["status_code"]) for a in row.detail["attempts"]] == [
        ("gpt-4o-mini", 301), ("backup", 200)]

    simulator.state.faults.extend([Fault(status=301), Fault(status=302)])
    with pytest.raises(openai.APIStatusError) as info:
        ask(gw, "nowhere")
    assert info.value.status_code == 502 and info.value.type == "api_error"


def test_a_stream_chunk_of_megabytes_is_relayed_whole(gateway_factory, simulator) -> None:
    """One SSE line over aiohttp's line limit (~2 MiB: a large tool call or an image in one delta) was a 500
    `internal error` mid-stream and a row without the answer; the limit is the non-streaming answer's (64 MiB)."""
    gw = gateway_factory(hosted_config(simulator.base_url))
    simulator.state.chunk_words = 10**7  # the whole reply in one chunk
    simulator.state.replies.append("x" * (3 * 2**20) + " y")
    with client(gw).chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=PROMPT, stream=True) as response:
        request_id = response.headers["x-draftgate-request-id"]
        text = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
    assert text == "x" * (3 * 2**20) + " y"
    row = flushed_db(gw).get_record(request_id)
    assert row is not None and (row.status, row.status_code) == ("ok", 200)


def test_a_stream_whose_attempts_all_time_out_is_billed_like_a_non_streaming_one(gateway_factory, simulator) -> None:
    """Each attempt given up on after the upstream had the request is billed its prompt (`billed`), streaming or
    not: a stream whose every attempt timed out waiting for its first byte was a 502 recorded at $0."""
    gw = gateway_factory(hosted_config(simulator.base_url))
    simulator.state.faults.extend([Fault(delay_s=3)] * 4)  # timeout_s 2: the alias's 3 tries, then backup's 1
    with pytest.raises(openai.APIStatusError) as info:
        client(gw).with_options(max_retries=0).chat.completions.create(model="gpt-4o-mini", messages=PROMPT,
                                                                       stream=True)
    assert info.value.status_code == 502
    row = flushed_db(gw).get_record(info.value.response.headers["x-draftgate-request-id"])
    assert row is not None and (row.status, row.status_code) == ("error", 502)
    assert [a.get("billed") for a in row.detail["attempts"]] == [True] * 4
    assert row.prompt_tokens > 0 and row.hosted_cost_usd and row.hosted_cost_usd > 0
    assert row.detail["usage_estimated"] is True


def test_a_stream_answered_after_a_billed_attempt_keeps_that_attempts_bill(gateway_factory, simulator) -> None:
    """A stream whose first attempt timed out waiting for headers (the upstream had the request: billed) and whose
    retry answered: its row had only the answer's tokens and dollars; the timed-out attempt's prompt is on it now,
    as on a non-streaming request's."""
    from router.usage import TokenEstimator

    gw = gateway_factory(hosted_config(simulator.base_url))
    mini = gw.services.hosted.get("gpt-4o-mini")
    counted = TokenEstimator().prompt_tokens("openai/gpt-4o-mini", PROMPT)
    simulator.state.faults.append(Fault(delay_s=3))  # timeout_s 2
    with client(gw).chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=PROMPT, stream=True, stream_options={"include_usage": True}) as response:
        chunks = list(response.parse())
        request_id = response.headers["x-draftgate-request-id"]
    usage = chunks[-1].usage
    assert usage is not None
    row = flushed_db(gw).get_record(request_id)
    assert row is not None and row.status == "ok"
    assert [a.get("billed") for a in row.detail["attempts"]] == [True, None]
    assert row.prompt_tokens == usage.prompt_tokens + counted and row.detail["usage_estimated"] is True
    assert row.hosted_cost_usd == pytest.approx(gw.services.pricing.hosted_cost(mini, usage.prompt_tokens,
                                                                                usage.completion_tokens)
                                                + gw.services.pricing.hosted_cost(mini, counted, 0))


def test_an_attempt_that_never_connected_is_not_billed(gateway_factory, simulator) -> None:
    """An upstream whose connect hangs (its accept queue full) until `timeout_s` (2 s, at or under the 10 s connect
    limit, so the whole-call timeout fires first): the request never reached it, yet the attempt was marked billed
    and its prompt charged, its type alone deciding. Now only a request whose headers were sent is billed."""
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        fillers = [socket.socket() for _ in range(4)]
        for filler in fillers:
            filler.setblocking(False)
            try:
                filler.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
        time.sleep(0.2)
        config = hosted_config(f"http://127.0.0.1:{port}/v1").replace("max_retries: 2", "max_retries: 0")
        gw = gateway_factory(config.replace("fallbacks: [backup]", "fallbacks: []"))
        try:
            for stream in (False, True):
                with pytest.raises(openai.APIStatusError) as info:
                    client(gw).chat.completions.create(model="gpt-4o-mini", messages=PROMPT, stream=stream)
                row = flushed_db(gw).get_record(info.value.response.headers["x-draftgate-request-id"])
                assert row is not None and row.status_code == 502
                assert [(a["error"], a.get("billed")) for a in row.detail["attempts"]] == [
                    ("upstream gpt-4o-mini timed out after 2s", None)], stream
                assert not row.hosted_cost_usd and row.prompt_tokens == 0
        finally:
            for filler in fillers:
                filler.close()
