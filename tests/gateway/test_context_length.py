"""The local model's context window: a prompt that fills it is a 400 `context_length_exceeded` (OpenAI's
code) before anything is computed, an answer ends where the context does, and a cascade sends such a
request straight to its target instead of failing it."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from gateway.simulator import Fault
from tests.conftest import MASTER_KEY, hosted_config
from tests.gateway.test_chat_hosted import client, flushed_db
from tests.gateway.test_local_route import local_config

CONTEXT = 64
LONG = [{"role": "user", "content": "Sort ascending: " + ", ".join(str(n % 100) for n in range(80))}]


def small_context(sim_url: str, checkpoint: Path, rules: str = "") -> str:
    config = local_config(sim_url, checkpoint, rules)
    return config.replace("  max_tokens: 24\n", f"  max_tokens: 24\n  max_model_len: {CONTEXT}\n")


def test_a_prompt_that_fills_the_context_is_a_400_and_an_answer_ends_at_it(gateway_factory, simulator,
                                                                          random_checkpoint) -> None:
    gw = gateway_factory(small_context(simulator.base_url, random_checkpoint))
    assert client(gw).models.retrieve("local/diffusiongemma").model_extra["max_model_len"] == CONTEXT
    with pytest.raises(openai.BadRequestError) as info:
        client(gw).chat.completions.create(model="local/diffusiongemma", messages=LONG, max_tokens=8)
    error = info.value.body
    assert isinstance(error, dict) and (error["code"], error["param"]) == ("context_length_exceeded", "messages")
    assert f"context is {CONTEXT} tokens" in info.value.message
    row = flushed_db(gw).get_record(info.value.response.headers["x-draftgate-request-id"])
    assert row is not None and (row.status, row.status_code) == ("error", 400)
    streamed = httpx.post(gw.url + "/v1/chat/completions", timeout=30, headers={"authorization": f"Bearer {MASTER_KEY}"},
                          json={"model": "local/diffusiongemma", "messages": LONG, "stream": True})
    assert streamed.status_code == 400 and streamed.json()["error"]["code"] == "context_length_exceeded"

    # A prompt that fits, with more max_tokens than the context has left: the answer stops at the edge.
    near = [{"role": "user", "content": "Sort ascending: " + ", ".join(str(n) for n in range(20, 42))}]
    answer = client(gw).chat.completions.create(model="local/diffusiongemma", messages=near, max_tokens=24)
    room = CONTEXT - answer.usage.prompt_tokens  # type: ignore[union-attr]
    assert 0 < room < 24, "the prompt must leave less room than max_tokens for this test to mean anything"
    assert answer.usage.completion_tokens <= room  # type: ignore[union-attr]
    assert simulator.state.received == []


def test_a_cascade_sends_a_prompt_too_long_for_the_local_model_to_its_target(gateway_factory, simulator,
                                                                            random_checkpoint) -> None:
    rules = "policies:\n  default:\n    cascade:\n      escalate_to: gpt-4o-mini\n"
    gw = gateway_factory(small_context(simulator.base_url, random_checkpoint, rules))
    simulator.state.replies.extend(["0, 1, 2", "0, 1, 2"])
    raw = client(gw).chat.completions.with_raw_response.create(model="auto", messages=LONG, max_tokens=8)
    assert raw.headers["x-draftgate-route"] == "escalated"
    assert raw.headers["x-draftgate-escalation"].startswith("no local draft: the local model's context is 64")
    assert raw.parse().choices[0].message.content == "0, 1, 2"
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and row.route == "escalated" and row.wasted_draft_usd == 0  # nothing was drafted
    assert row.hosted_cost_usd and row.hosted_cost_usd > 0
    chunks = list(client(gw).chat.completions.create(model="auto", messages=LONG, max_tokens=8, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "0, 1, 2"
    assert len(simulator.state.received) == 2


def test_a_cascade_over_vllm_escalates_a_request_the_pool_refuses(gateway_factory, simulator) -> None:
    """vLLM checks its own context (`--max-model-len`); its 400 is the request's fault for the local model
    only, so the cascade's target answers instead of the client getting an error."""
    pool = (f"local:\n  enabled: true\n  backend: vllm\n  api_base: {simulator.base_url}\n"
            "policies:\n  default:\n    cascade:\n      escalate_to: gpt-4o-mini\n")
    gw = gateway_factory(hosted_config(simulator.base_url, local=True).replace("local:\n  enabled: true\n", pool))
    message = "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens"
    simulator.state.faults.append(Fault(status=400, message=message))
    simulator.state.replies.append("0, 1, 2")
    raw = client(gw).chat.completions.with_raw_response.create(model="auto", messages=LONG, max_tokens=8)
    assert raw.headers["x-draftgate-route"] == "escalated"
    assert "refused the request (400)" in raw.headers["x-draftgate-escalation"]
    assert raw.parse().choices[0].message.content == "0, 1, 2"
    assert [r.body["model"] for r in simulator.state.received] == ["diffusiongemma", "gpt-4o-mini"]
