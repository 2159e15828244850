"""Through LiteLLM (the translation path) an answer is dumped from LiteLLM's objects without their None fields,
which also dropped the nulls OpenAI always sends: a tool call's `message.content`, `logprobs`, and every chunk's
`finish_reason` — a JS client's `finish_reason !== null` ended its stream loop at the first chunk."""

from __future__ import annotations

import httpx
import orjson

from gateway.simulator import Fault
from tests.conftest import MASTER_KEY, hosted_config
from tests.gateway.test_chat_hosted import flushed_db
from tests.gateway.test_faults_streams_litellm import litellm_config

TOOL_ANSWER = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "sim-model",
               "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": None, "message": {
                   "role": "assistant", "content": None, "tool_calls": [
                       {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}],
               "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}
BODY = {"messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}
AUTH = {"authorization": f"Bearer {MASTER_KEY}"}


def test_litellm_answers_keep_openais_nulls(gateway_factory, simulator) -> None:
    gw = gateway_factory(litellm_config(simulator.base_url))
    for model in ("gpt-4o-mini", "via-litellm"):  # the direct path relays them as sent: both must agree
        simulator.state.faults.append(Fault(body=orjson.dumps(TOOL_ANSWER)))
        r = httpx.post(gw.url + "/v1/chat/completions", json={**BODY, "model": model}, headers=AUTH, timeout=60)
        assert r.status_code == 200, r.text
        (choice,) = r.json()["choices"]
        assert choice["finish_reason"] == "tool_calls" and "logprobs" in choice and choice["logprobs"] is None
        assert "content" in choice["message"] and choice["message"]["content"] is None, (model, choice)
        assert choice["message"]["tool_calls"][0]["function"]["name"] == "f"
        assert "provider_specific_fields" not in choice and "provider_specific_fields" not in choice["message"]


def test_litellm_stream_chunks_say_finish_reason_null_until_the_end(gateway_factory, simulator) -> None:
    gw = gateway_factory(litellm_config(simulator.base_url))
    r = httpx.post(gw.url + "/v1/chat/completions", json={**BODY, "model": "via-litellm", "stream": True},
                   headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    chunks = [orjson.loads(line[6:]) for line in r.text.split("\n") if line.startswith("data: {")]
    reasons = [c["choices"][0]["finish_reason"] for c in chunks if c.get("choices")]
    assert len(reasons) >= 3 and reasons[-1] == "stop" and all(
        "finish_reason" in c["choices"][0] for c in chunks if c.get("choices"))
    assert reasons[:-1] == [None] * (len(reasons) - 1)


ANTHROPIC_MODEL = """\
  - name: claude
    model: anthropic/claude-haiku-4-5
    api_base: {url}
    api_key: sk-ant-test
    timeout_s: 2
    max_retries: 1
"""


def test_an_answer_litellm_cannot_read_is_a_billed_502_not_a_400(gateway_factory, simulator) -> None:
    """An Anthropic alias whose `api_base` answers in OpenAI's shape (a proxy set up wrong): LiteLLM fails reading
    the 200 with a KeyError, which the gateway took for a request it cannot translate: a 400 blaming the client,
    not retried, and a $0 row for work the provider did. It is a 502 (retried, fallbacks tried), each attempt
    billed at its prompt."""
    config = hosted_config(simulator.base_url).replace(
        "local:\n", ANTHROPIC_MODEL.format(url=simulator.base_url) + "local:\n", 1)
    gw = gateway_factory(config)
    r = httpx.post(gw.url + "/v1/chat/completions", json={"model": "claude", "messages": BODY["messages"]},
                   headers=AUTH, timeout=60)
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error", r.text
    assert len(simulator.state.received) == 2  # retried once, as any unusable answer
    row = flushed_db(gw).get_record(r.headers["x-draftgate-request-id"])
    assert row is not None and row.status_code == 502 and row.prompt_tokens > 0
    assert row.hosted_cost_usd is not None and row.hosted_cost_usd > 0 and not row.unpriced
    assert all(a["billed"] for a in (row.detail or {})["attempts"])


def test_a_refusal_through_litellm_keeps_the_providers_message_code_and_param(gateway_factory, simulator) -> None:
    """Through LiteLLM a provider's 400 came back as `upstream_rejected` with no `param`, its message LiteLLM's
    prefix and the provider's raw JSON body: a client branching on `context_length_exceeded` (which the direct
    path relays, as the README says) could not. Embeddings through LiteLLM share the mapping."""
    gw = gateway_factory(litellm_config(simulator.base_url).replace(
        "local:\n", "  - name: embed-litellm\n    model: hosted_vllm/sim-embedder\n"
                    f"    api_base: {simulator.base_url}\n    max_retries: 0\nlocal:\n", 1))
    calls = (("/v1/chat/completions", {"model": "via-litellm", "messages": BODY["messages"]}),
             ("/v1/embeddings", {"model": "embed-litellm", "input": "hi"}))
    for path, body in calls:
        simulator.state.faults.append(Fault(status=400, message="prompt is too long", code="context_length_exceeded",
                                            param="messages"))
        r = httpx.post(gw.url + path, json=body, headers=AUTH, timeout=60)
        error = r.json()["error"]
        assert r.status_code == 400 and (error["code"], error["param"]) == ("context_length_exceeded", "messages")
        assert error["message"] == f"upstream {body['model']}: prompt is too long", error
