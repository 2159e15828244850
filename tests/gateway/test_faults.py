"""Retries, Retry-After, fallbacks, timeouts and broken streams against the simulated provider."""

from __future__ import annotations

import time

import openai
import pytest

from gateway.simulator import Fault
from tests.conftest import hosted_config
from tests.gateway.test_chat_hosted import client, flushed_db


def ask(gw, content: str = "hi"):  # type: ignore[no-untyped-def]
    return client(gw).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": content}])


def test_500_is_retried_and_attempts_are_recorded(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    simulator.state.faults.extend([Fault(status=500), Fault(status=502)])
    raw = ask(gw, "retry me")
    assert raw.parse().choices[0].message.content == "echo: retry me"
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and row.attempts == 3
    assert [a["status_code"] for a in row.detail["attempts"]] == [500, 502, 200]
    assert len(simulator.state.received) == 3


def test_429_retry_after_is_honoured(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    simulator.state.faults.append(Fault(status=429, retry_after_s=0.6, message="slow down"))
    started = time.monotonic()
    raw = ask(gw)
    assert time.monotonic() - started >= 0.6
    assert raw.parse().choices[0].message.content == "echo: hi"


def test_an_upstream_still_rate_limiting_after_retries_is_a_429_with_retry_after(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    # gpt-4o-mini: 1 try + 2 retries, then its fallback: every one rate-limited
    simulator.state.faults.extend([Fault(status=429, retry_after_s=0.2, message="slow down")] * 3
                                  + [Fault(status=429, retry_after_s=2.5, message="slow down too")])
    with pytest.raises(openai.RateLimitError) as info:
        ask(gw)
    assert info.value.body["code"] == "upstream_rate_limited"  # type: ignore[index]
    assert "slow down too" in info.value.message and info.value.response.headers["retry-after"] == "3"
    row = flushed_db(gw).get_record(info.value.response.headers["x-draftgate-request-id"])
    assert row is not None and (row.status, row.status_code, row.attempts) == ("error", 429, 4)


def test_a_retry_after_longer_than_the_gateway_waits_goes_to_the_fallback_at_once(gateway_factory, simulator) -> None:
    """A 429 asking for 120 s: the gateway will not hold a request that long (it waits at most 30 s), and a retry
    sooner is one the upstream asked not to get. So the alias is not retried: its fallback answers at once, or,
    without one, the 429 and its Retry-After go straight to the client (it used to wait 30 s per retry first)."""
    gw = gateway_factory(hosted_config(simulator.base_url))
    simulator.state.faults.append(Fault(status=429, retry_after_s=120, message="quota: come back later"))
    started = time.monotonic()
    raw = ask(gw, "at once")
    assert raw.parse().choices[0].message.content == "echo: at once" and time.monotonic() - started < 5
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and row.provider_model == "openai/gpt-4o"  # the fallback, `backup`
    assert [(a["alias"], a["status_code"]) for a in row.detail["attempts"]] == [("gpt-4o-mini", 429),
                                                                                ("backup", 200)]
    simulator.state.faults.append(Fault(status=429, retry_after_s=120, message="quota: come back later"))
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as info:  # gpt-4o-mini rests its 120 s; backup is limited too
        ask(gw, "both limited")
    assert time.monotonic() - started < 5 and info.value.response.headers["retry-after"] == "120"
    assert len(simulator.state.received) == 3  # backup's one call, no retries


def test_metrics_count_every_upstream_attempt_by_alias_and_result(gateway_factory, simulator) -> None:
    """Retries, fallbacks and cooling aliases are what an SRE watches; the request counter alone showed one
    request where the upstream saw four calls."""
    import httpx

    gw = gateway_factory(hosted_config(simulator.base_url))
    simulator.state.faults.extend([Fault(status=500)] * 3)  # gpt-4o-mini: its try and both retries; backup answers
    ask(gw, "four calls")
    flushed_db(gw)
    text = httpx.get(gw.url + "/metrics").text
    assert 'draftgate_upstream_attempts_total{alias="gpt-4o-mini",result="error"} 3.0' in text
    assert 'draftgate_upstream_attempts_total{alias="backup",result="ok"} 1.0' in text
    assert 'draftgate_requests_total{model="gpt-4o-mini",route="hosted",status="ok"} 1.0' in text


def test_a_request_every_upstream_failed_counts_and_lists_its_attempts(gateway_factory, simulator) -> None:
    """In an outage, when a request fails at every alias, its calls were neither counted in
    `draftgate_upstream_attempts_total` (only served requests' were: the failing calls were invisible exactly when
    they mattered) nor listed in its row (only their number). Now both, streaming or not."""
    import httpx

    gw = gateway_factory(hosted_config(simulator.base_url))
    for stream in (False, True):
        simulator.state.faults.extend([Fault(status=503)] * 4)  # gpt-4o-mini's try and both retries, then backup
        with pytest.raises(openai.InternalServerError) as info:
            client(gw).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}],
                                               stream=stream)
        row = flushed_db(gw).get_record(info.value.response.headers["x-draftgate-request-id"])
        assert row is not None and (row.status, row.status_code, row.attempts) == ("error", 502, 4)
        assert [(a["alias"], a["status_code"]) for a in row.detail["attempts"]] == [("gpt-4o-mini", 503)] * 3 + [
            ("backup", 503)]
        assert row.provider_model == "openai/gpt-4o" and not row.hosted_cost_usd
    text = httpx.get(gw.url + "/metrics").text
    assert 'draftgate_upstream_attempts_total{alias="gpt-4o-mini",result="error"} 6.0' in text
    assert 'draftgate_upstream_attempts_total{alias="backup",result="error"} 2.0' in text


def test_an_answer_over_the_size_limit_is_refused_not_read_whole(gateway_factory, simulator) -> None:
    """An upstream sending 80 MB for one completion (over the 64 MiB limit) is an attempt that failed, billed
    as answered, and the fallback answers; the gateway read it whole before, into its memory."""
    gw = gateway_factory(hosted_config(simulator.base_url))
    simulator.state.faults.extend([Fault(padding_bytes=80_000_000)] * 3)  # gpt-4o-mini's try and both retries
    raw = ask(gw, "not that much")
    assert raw.parse().choices[0].message.content == "echo: not that much"
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and row.provider_model == "openai/gpt-4o"
    assert [(a["alias"], a["status_code"], a.get("billed", False)) for a in row.detail["attempts"]] == [
        ("gpt-4o-mini", 502, True)] * 3 + [("backup", 200, False)]


def test_400_is_not_retried_and_returns_upstream_message(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    simulator.state.faults.append(Fault(status=400, message="context too long for this model"))
    with pytest.raises(openai.BadRequestError) as info:
        ask(gw)
    assert "context too long for this model" in info.value.message
    assert len(simulator.state.received) == 1  # neither retried nor sent to the fallback


def test_exhausted_retries_fall_back_to_the_next_alias(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    simulator.state.faults.extend([Fault(status=503)] * 3)  # gpt-4o-mini: 1 try + 2 retries
    raw = ask(gw, "fallback please")
    assert raw.parse().choices[0].message.content == "echo: fallback please"
    assert simulator.state.received[-1].body["model"] == "gpt-4o"
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and row.provider_model == "openai/gpt-4o" and row.attempts == 4


@pytest.mark.parametrize("status", [401, 403, 404])
def test_upstream_key_or_model_errors_go_to_the_fallback_without_retries(gateway_factory, simulator,
                                                                          status: int) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    simulator.state.faults.append(Fault(status=status, message="invalid api key"))
    raw = ask(gw, "other provider")
    assert raw.parse().choices[0].message.content == "echo: other provider"
    assert [r.body["model"] for r in simulator.state.received] == ["gpt-4o-mini", "gpt-4o"]
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and [a["status_code"] for a in row.detail["attempts"]] == [status, 200]


def test_all_upstreams_failing_is_a_502_with_the_upstream_message(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    simulator.state.faults.extend([Fault(status=500, message="kaboom upstream")] * 4)
    with pytest.raises(openai.InternalServerError) as info:
        ask(gw)
    assert info.value.status_code == 502
    assert "kaboom upstream" in info.value.message
    body = info.value.body
    assert isinstance(body, dict) and body["code"] == "upstream_error"
    request_id = info.value.response.headers["x-draftgate-request-id"]
    row = flushed_db(gw).get_record(request_id)
    assert row is not None and row.status == "error" and row.status_code == 502


def test_an_sdk_at_its_default_retries_does_not_repeat_the_gateways_retries(gateway_factory, simulator) -> None:
    """The gateway tried gpt-4o-mini three times and its fallback once: the OpenAI SDK (2 retries of any 5xx
    by default) must not send the whole chain again, which made one call 12 upstream calls."""
    gw = gateway_factory(hosted_config(simulator.base_url))
    simulator.state.faults.extend([Fault(status=500, message="down")] * 40)
    sdk = openai.OpenAI(base_url=gw.base_url, api_key=client(gw).api_key, timeout=20)  # default max_retries
    with pytest.raises(openai.InternalServerError) as info:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "once"}])
    assert info.value.response.headers["x-should-retry"] == "false"
    assert len(simulator.state.received) == 4


def test_timeout_and_connection_reset_are_retried(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    simulator.state.faults.extend([Fault(delay_s=2.5), Fault(reset=True)])  # timeout_s is 2
    raw = ask(gw, "after faults")
    assert raw.parse().choices[0].message.content == "echo: after faults"
    # The upstream had the timed-out attempt's prompt and worked on it: billed (estimated), never $0; the
    # reset one was not billed here (no answer came, and nothing says the provider finished it).
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and [a.get("billed", False) for a in row.detail["attempts"]] == [True, False, False]
    answered = raw.parse().usage
    assert answered is not None and row.prompt_tokens > answered.prompt_tokens and row.detail["usage_estimated"]


def test_an_upstream_that_trickles_its_answer_times_out_at_timeout_s(gateway_factory, simulator) -> None:
    """`timeout_s` bounds a whole non-streaming attempt, as LiteLLM's `timeout` does: an upstream that is never
    silent for long but takes 10 x 0.5 s to send its answer is cut off at 2 s and retried (it was waited for
    however long it took: a read timeout only notices silence)."""
    gw = gateway_factory(hosted_config(simulator.base_url))
    simulator.state.faults.append(Fault(trickle_s=0.5))  # timeout_s is 2
    started = time.monotonic()
    raw = ask(gw, "slowly")
    assert raw.parse().choices[0].message.content == "echo: slowly"
    assert time.monotonic() - started < 4.5
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and [a["status_code"] for a in row.detail["attempts"]] == [None, 200]
    assert "timed out after 2s" in row.detail["attempts"][0]["error"]


def test_stream_broken_halfway_ends_with_an_error_not_a_mixed_answer(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    simulator.state.faults.append(Fault(break_stream_after=2))
    received: list[str] = []
    with pytest.raises(openai.APIError), client(gw).chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "a b c d e f"}],
            stream=True) as response:
        request_id = response.headers["x-draftgate-request-id"]
        for chunk in response.parse():
            received.append(chunk.choices[0].delta.content or "")
    assert "echo: a b c d e f".startswith("".join(received))  # a prefix of one answer, nothing else
    assert len(simulator.state.received) == 1  # a started stream is never silently retried (no duplicates)
    row = flushed_db(gw).get_record(request_id)
    assert row is not None and row.status == "error" and row.stream


def test_a_stream_that_ends_before_its_answer_finished_ends_with_an_error(gateway_factory, simulator) -> None:
    """An upstream (or a proxy timing it out) that ends the body cleanly midway, without `[DONE]` and before any
    `finish_reason`: the answer is cut short, so the client gets an error event, not the gateway's own `[DONE]`
    that would pass the truncated answer off as whole; the row is an error, priced from what was sent."""
    gw = gateway_factory(hosted_config(simulator.base_url))
    simulator.state.faults.append(Fault(end_stream_after=2))
    received: list[str] = []
    with pytest.raises(openai.APIError) as info, client(gw).chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "a b c d e f"}], stream=True) as response:
        request_id = response.headers["x-draftgate-request-id"]
        for chunk in response.parse():
            received.append(chunk.choices[0].delta.content or "")
    assert "before its answer finished" in info.value.message
    assert "echo: a b c d e f".startswith("".join(received)) and "".join(received) != "echo: a b c d e f"
    row = flushed_db(gw).get_record(request_id)
    assert row is not None and (row.status, row.status_code) == ("error", 502)
    assert row.prompt_tokens > 0 and row.hosted_cost_usd and row.detail["usage_estimated"] is True
    whole = client(gw).chat.completions.create(model="gpt-4o-mini", stream=True,
                                               messages=[{"role": "user", "content": "a b"}])
    assert "".join(c.choices[0].delta.content or "" for c in whole if c.choices) == "echo: a b"  # as before


def test_a_whole_stream_without_finish_reason_is_relayed_as_whole(gateway_factory, simulator) -> None:
    """An upstream that ends with `[DONE]` but never sets `finish_reason` (a quirk of some OpenAI-compatible
    servers) has said its answer is whole: the client gets it and `[DONE]`, not an error event after it."""
    gw = gateway_factory(hosted_config(simulator.base_url))
    simulator.state.faults.append(Fault(no_finish_reason=True))
    with client(gw).chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "a b c"}], stream=True) as response:
        request_id = response.headers["x-draftgate-request-id"]
        text = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
    assert text == "echo: a b c"
    row = flushed_db(gw).get_record(request_id)
    assert row is not None and (row.status, row.status_code) == ("ok", 200)
    assert row.detail["upstream_no_finish_reason"] is True and row.hosted_cost_usd


def test_stream_open_failure_is_retried_before_the_first_byte(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    simulator.state.faults.append(Fault(status=500))
    stream = client(gw).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "echo: x"


def test_a_stream_that_fails_before_its_first_chunk_is_retried_and_falls_back(gateway_factory, simulator) -> None:
    """An upstream that accepts a stream (200) and then drops the connection, sends an error event or ends its body
    before any chunk: nothing had reached the client, yet it got a 200 whose only event was the error, neither retried nor
    sent to the fallback. Now such an attempt fails like a refused one (billed its prompt, as a broken 200), and a
    stream whose every attempt fails so is a 502 before the stream, not an error inside a 200."""
    gw = gateway_factory(hosted_config(simulator.base_url))
    simulator.state.faults.extend([Fault(break_stream_after=-1), Fault(error_in_stream_after=-1, message="busy"),
                                   Fault(end_stream_after=-1)])  # dropped, an error event, an empty body
    with client(gw).chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], stream=True) as response:
        text = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
        request_id = response.headers["x-draftgate-request-id"]
    assert text == "echo: x"
    row = flushed_db(gw).get_record(request_id)
    assert row is not None and (row.status, row.attempts) == ("ok", 4)
    assert [(a["status_code"], a.get("billed")) for a in row.detail["attempts"]] == [(502, True)] * 3 + [(200, None)]
    assert row.detail["usage_estimated"] is True

    simulator.state.faults.extend([Fault(error_in_stream_after=-1, message="busy")] * 4)  # backup's too
    with pytest.raises(openai.InternalServerError) as info:
        client(gw).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}],
                                           stream=True)
    assert info.value.status_code == 502 and "busy" in info.value.message
