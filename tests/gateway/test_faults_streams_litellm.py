"""Faults the first fault tests left open: an upstream stream that goes silent after it started, and
the same faults on a provider reached through LiteLLM (translation path) instead of the direct one."""

from __future__ import annotations

import time

import openai
import pytest

from gateway.simulator import Fault
from tests.conftest import hosted_config
from tests.gateway.test_chat_hosted import client, flushed_db

LITELLM_MODEL = """\
  - name: via-litellm
    model: hosted_vllm/sim-model
    api_base: {url}
    price: {{input_per_mtok: 1.0, output_per_mtok: 1.0}}
    timeout_s: 2
    max_retries: 2
"""


def litellm_config(url: str) -> str:
    return hosted_config(url).replace("local:\n", LITELLM_MODEL.format(url=url) + "local:\n", 1)


def _stream_text(gw, model: str, prompt: str) -> tuple[list[str], str]:  # type: ignore[no-untyped-def]
    received: list[str] = []
    with pytest.raises(openai.APIError), client(gw).chat.completions.with_streaming_response.create(
            model=model, messages=[{"role": "user", "content": prompt}], stream=True) as response:
        request_id = response.headers["x-draftgate-request-id"]
        for chunk in response.parse():
            received.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
    return received, request_id


@pytest.mark.parametrize("model", ["gpt-4o-mini", "via-litellm"])
def test_a_stream_that_goes_silent_ends_with_an_error_after_the_read_timeout(gateway_factory, simulator,
                                                                              model: str) -> None:
    gw = gateway_factory(litellm_config(simulator.base_url))
    # Warmed first: LiteLLM's import on the first call costs seconds (10+ on a busy machine), not the timeout's.
    client(gw).chat.completions.create(model=model, messages=[{"role": "user", "content": "warm up"}])
    simulator.state.received.clear()
    simulator.state.faults.append(Fault(stall_stream_after=2, stall_s=20))
    started = time.monotonic()
    received, request_id = _stream_text(gw, model, "a b c d e f")
    assert time.monotonic() - started < 10  # the model's 2 s timeout, not the upstream's 20 s silence
    assert "echo: a b c d e f".startswith("".join(received)) and received  # a prefix of one answer
    assert len(simulator.state.received) == 1  # a started stream is never retried
    row = flushed_db(gw).get_record(request_id)
    assert row is not None and row.status == "error" and row.stream


def test_litellm_path_retries_5xx_and_honours_retry_after(gateway_factory, simulator) -> None:
    gw = gateway_factory(litellm_config(simulator.base_url))
    simulator.state.faults.extend([Fault(status=500), Fault(status=429, retry_after_s=0.6)])
    started = time.monotonic()
    raw = client(gw).chat.completions.with_raw_response.create(
        model="via-litellm", messages=[{"role": "user", "content": "again"}])
    assert time.monotonic() - started >= 0.6
    assert raw.parse().choices[0].message.content == "echo: again"
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and row.attempts == 3 and len(simulator.state.received) == 3


def test_litellm_path_does_not_retry_a_400_and_relays_its_message(gateway_factory, simulator) -> None:
    gw = gateway_factory(litellm_config(simulator.base_url))
    simulator.state.faults.append(Fault(status=400, message="context too long for this model"))
    with pytest.raises(openai.BadRequestError) as info:
        client(gw).chat.completions.create(model="via-litellm", messages=[{"role": "user", "content": "x"}])
    assert "context too long for this model" in info.value.message
    assert len(simulator.state.received) == 1


def test_litellm_path_stream_broken_halfway_is_not_a_mixed_answer(gateway_factory, simulator) -> None:
    gw = gateway_factory(litellm_config(simulator.base_url))
    simulator.state.faults.append(Fault(break_stream_after=2))
    received, request_id = _stream_text(gw, "via-litellm", "a b c d e f")
    assert "echo: a b c d e f".startswith("".join(received))
    assert len(simulator.state.received) == 1
    row = flushed_db(gw).get_record(request_id)
    assert row is not None and row.status == "error"


def test_litellm_path_relays_the_upstreams_retry_after(gateway_factory, simulator) -> None:
    """LiteLLM keeps the provider's headers on its exception; they were not read, so a 429 asking for 120 s was
    retried at once (twice) and the client got `retry-after: 1`. Now, as on the direct path: a pause the gateway
    will not wait out goes to the client at once with its Retry-After, and a short one is waited before the retry."""
    gw = gateway_factory(litellm_config(simulator.base_url))
    ai = client(gw).with_options(max_retries=0)
    ai.chat.completions.create(model="via-litellm", messages=[{"role": "user", "content": "warm up"}])
    simulator.state.received.clear()
    simulator.state.faults.append(Fault(status=429, retry_after_s=120, message="quota: come back later"))
    with pytest.raises(openai.RateLimitError) as info:
        ai.chat.completions.create(model="via-litellm", messages=[{"role": "user", "content": "x"}])
    assert info.value.response.headers["retry-after"] == "120" and "quota: come back later" in info.value.message
    assert len(simulator.state.received) == 1  # not retried sooner than it asked
    row = flushed_db(gw).get_record(info.value.response.headers["x-draftgate-request-id"])
    assert row is not None and (row.status, row.status_code, row.attempts) == ("error", 429, 1)

    gw2 = gateway_factory(litellm_config(simulator.base_url))  # a fresh gateway: the first one rests the alias
    simulator.state.faults.append(Fault(status=429, retry_after_s=1.5, message="slow down"))
    started = time.monotonic()
    answer = client(gw2).chat.completions.create(model="via-litellm", messages=[{"role": "user", "content": "wait"}])
    assert answer.choices[0].message.content == "echo: wait" and time.monotonic() - started >= 1.5


CLAUDE = """\
  - name: claude
    model: anthropic/claude-haiku-4-5-20251001
    api_base: http://127.0.0.1:1
    api_key: sk-ant-test
    timeout_s: 2
    max_retries: 2
"""


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_litellm_cannot_translate_is_a_clean_400_not_a_retried_502_with_a_traceback(
        gateway_factory, simulator, stream: bool) -> None:
    """A tool type or content part LiteLLM cannot turn into Anthropic's API fails in LiteLLM's own code, which it
    wraps as an APIConnectionError (status 500) with the Python traceback in its message. The client got a 502
    quoting that traceback (file paths, source lines), after two pointless retries; now a 400 in one line, and a
    real connection failure is still retried."""
    gw = gateway_factory(hosted_config(simulator.base_url).replace("local:\n", CLAUDE + "local:\n", 1))
    ai = client(gw).with_options(max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        ai.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}], stream=stream,
                                   tools=[{"type": "retrieval"}])  # type: ignore[list-item]
    assert "Unsupported tool type: retrieval" in info.value.message
    assert "Traceback" not in info.value.message and ".py" not in info.value.message
    row = flushed_db(gw).get_record(info.value.response.headers["x-draftgate-request-id"])
    assert row is not None and (row.status, row.status_code, row.attempts) == ("error", 400, 1)
    with pytest.raises(openai.InternalServerError) as down:  # nothing listens there: retried, then a 502
        ai.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}], stream=stream)
    assert down.value.status_code == 502 and "after 3 attempt(s)" in down.value.message


def test_a_provider_whose_sdk_is_not_installed_is_a_502_at_once_not_a_400(gateway_factory, simulator) -> None:
    """Vertex AI needs `google-auth`, which this install lacks: LiteLLM wraps the ImportError like a translation
    failure, but it is the gateway's setup, not the request: a 502 in one line, without retries or a traceback."""
    vertex = CLAUDE.replace("name: claude", "name: vertex").replace("anthropic/claude-haiku-4-5-20251001",
                                                                    "vertex_ai/gemini-1.5-pro")
    gw = gateway_factory(hosted_config(simulator.base_url).replace("local:\n", vertex + "local:\n", 1))
    with pytest.raises(openai.InternalServerError) as info:
        client(gw).chat.completions.create(model="vertex", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 502 and "No module named" in info.value.message
    assert "after 1 attempt(s)" in info.value.message and "Traceback" not in info.value.message


def test_litellm_path_retries_and_bills_a_200_it_cannot_use(gateway_factory, simulator) -> None:
    """A 200 whose body is cut short, or one with `choices: []`: on the direct path retried and billed its prompt.
    Through LiteLLM the cut body was a 502 at once, not retried, its row $0; `choices: []` was relayed as an answer
    (the client's `choices[0]` fails) and recorded ok. Now both are retried, and billed, as on the direct path."""
    from router.usage import TokenEstimator

    gw = gateway_factory(litellm_config(simulator.base_url))
    messages = [{"role": "user", "content": "please count these words"}]
    counted = TokenEstimator().prompt_tokens("hosted_vllm/sim-model", messages)
    simulator.state.faults.extend([Fault(broken_body=True), Fault(body=b'{"choices": []}')])
    raw = client(gw).with_options(max_retries=0).chat.completions.with_raw_response.create(
        model="via-litellm", messages=messages)  # type: ignore[arg-type]
    answer = raw.parse()
    assert answer.choices[0].message.content == "echo: please count these words" and answer.usage is not None
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and row.status == "ok" and len(simulator.state.received) == 3
    assert [(a["status_code"], a.get("billed")) for a in row.detail["attempts"]] == [(502, True), (502, True),
                                                                                     (200, None)]
    assert row.prompt_tokens == answer.usage.prompt_tokens + 2 * counted and row.detail["usage_estimated"]


def test_a_litellm_stream_its_client_leaves_stops_at_once(gateway_factory, simulator) -> None:
    """LiteLLM hands out the chunks it has buffered without awaiting, so a fast upstream's stream kept the event
    loop to itself: the client's hang-up went unnoticed until the whole answer was read (40 s and 119,000 tokens
    billed here for a client gone after five chunks), and every other request waited. Now it yields to the loop
    as the direct path does: the stream stops at once, cancelled, billed what was relayed."""
    gw = gateway_factory(litellm_config(simulator.base_url))
    ai = client(gw)
    ai.chat.completions.create(model="via-litellm", messages=[{"role": "user", "content": "warm up"}])
    simulator.state.replies.append(" ".join(f"w{i}" for i in range(40_000)))  # distinct: LiteLLM cuts repeats
    started = time.monotonic()
    with ai.chat.completions.with_streaming_response.create(
            model="via-litellm", messages=[{"role": "user", "content": "long"}], stream=True) as response:
        request_id = response.headers["x-draftgate-request-id"]
        lines = response.iter_lines()
        for _ in range(5):
            next(lines)
    row = None
    while row is None and time.monotonic() - started < 90:
        row = flushed_db(gw).get_record(request_id)
        time.sleep(0.2)
    assert row is not None and (row.status, row.status_code) == ("cancelled", 499)
    assert row.completion_tokens < 5_000 and row.latency_ms < 10_000, (row.completion_tokens, row.latency_ms)


def test_a_whole_litellm_stream_of_several_choices_is_relayed_as_whole(gateway_factory, simulator) -> None:
    """LiteLLM's stream wrapper relays one finish_reason, so with `n: 2` the second choice's never came: the whole
    answer was followed by a `stream_interrupted` error event (the SDK raised) and recorded as a 502. LiteLLM saw the
    upstream finish and ended cleanly, so the answer is whole: relayed to `[DONE]`, recorded ok."""
    gw = gateway_factory(litellm_config(simulator.base_url))
    texts = {0: "", 1: ""}
    with client(gw).chat.completions.with_streaming_response.create(
            model="via-litellm", messages=[{"role": "user", "content": "a b c"}], stream=True, n=2) as response:
        request_id = response.headers["x-draftgate-request-id"]
        for chunk in response.parse():  # raises on an error event
            for choice in chunk.choices:
                texts[choice.index] += choice.delta.content or ""
    assert texts == {0: "echo: a b c", 1: "echo: a b c"}
    row = flushed_db(gw).get_record(request_id)
    assert row is not None and (row.status, row.status_code, row.completion_tokens) == ("ok", 200, 8)
    assert row.detail["upstream_no_finish_reason"] is True


@pytest.mark.parametrize("stream", [False, True])
def test_litellm_path_marks_usage_it_counted_itself_as_estimated(gateway_factory, simulator, stream: bool) -> None:
    gw = gateway_factory(litellm_config(simulator.base_url))
    simulator.state.faults.append(Fault(no_usage=True))  # LiteLLM fills in usage from its own tokenizer
    messages = [{"role": "user", "content": "Tell me about the weather in Oslo in three sentences, please."}]
    options = {"stream_options": {"include_usage": True}} if stream else {}
    raw = client(gw).chat.completions.with_raw_response.create(model="via-litellm", messages=messages,
                                                               stream=stream, **options)
    usage = [c.usage for c in raw.parse() if c.usage] if stream else []
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and row.status == "ok" and row.prompt_tokens > 0 and row.hosted_cost_usd
    assert row.detail["usage_estimated"] is True
    if stream:  # the usage chunk the client asked for holds the figures the ledger holds, counted once
        assert len(usage) == 1 and (usage[0].prompt_tokens, usage[0].completion_tokens) == (
            row.prompt_tokens, row.completion_tokens)
    reported = client(gw).chat.completions.with_raw_response.create(model="via-litellm", messages=messages,
                                                                    stream=stream)
    if stream:
        list(reported.parse())
    row = flushed_db(gw).get_record(reported.headers["x-draftgate-request-id"])
    assert row is not None and "usage_estimated" not in (row.detail or {})  # the provider's own figures
