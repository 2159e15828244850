"""`backend: vllm` takes vLLM's sampling parameters: the openai SDK against a real gateway whose local route is
the simulator standing in for a vLLM server (it records each body and returns logprobs in vLLM's shape)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import hosted_config
from tests.gateway.test_chat_hosted import client, flushed_db
from tests.gateway.test_cli import draftgate

LOCAL = "local/diffusiongemma"
SAMPLING = {"logprobs": True, "top_logprobs": 2, "frequency_penalty": 0.5, "presence_penalty": -0.5,
            "logit_bias": {"42": 5.0}}
EXTENSIONS = {"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1}  # vLLM's, sent through extra_body
CASCADE = """\
policies:
  default:
    cascade:
      escalate_to: gpt-4o-mini
      verifiers: [{regex: {pattern: '^-?\\d+$', mode: fullmatch}}]
"""


def vllm_gateway(gateway_factory, simulator, rules: str = ""):  # type: ignore[no-untyped-def]
    pool = f"local:\n  enabled: true\n  backend: vllm\n  api_base: {simulator.base_url}\n"
    return gateway_factory(hosted_config(simulator.base_url, rules, local=True).replace("local:\n  enabled: true\n",
                                                                                        pool))


def streamed_logprobs(chunks: list[Any], index: int = 0) -> list[dict[str, Any]]:
    """Every token's logprobs a stream gave choice `index`, each content chunk's covering its own text."""
    tokens = []
    for chunk in chunks:
        for choice in chunk.choices:
            if choice.index == index and choice.delta.content:
                assert choice.logprobs is not None, chunk
                assert "".join(t.token for t in choice.logprobs.content) == choice.delta.content
                tokens += [t.model_dump() for t in choice.logprobs.content]
    return tokens


def test_vllms_sampling_parameters_are_forwarded_upstream(gateway_factory, simulator) -> None:
    gw = vllm_gateway(gateway_factory, simulator)
    raw = client(gw).chat.completions.with_raw_response.create(
        model=LOCAL, messages=[{"role": "user", "content": "hi"}], max_tokens=8, seed=3, **SAMPLING,
        extra_body=EXTENSIONS)
    assert raw.headers["x-draftgate-route"] == "local"
    assert raw.parse().choices[0].message.content == "echo: hi"
    sent = simulator.state.received[-1].body
    assert sent["model"] == "diffusiongemma" and sent["seed"] == 3
    assert {k: sent[k] for k in [*SAMPLING, *EXTENSIONS]} == {**SAMPLING, **EXTENSIONS}
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and row.route == "local" and row.status == "ok"
    # A stream takes them too; the neutral values SDKs send by default are neither refused nor forwarded.
    neutral = {**SAMPLING, "logprobs": False, "top_logprobs": 0, "presence_penalty": 0, "logit_bias": {}}
    chunks = list(client(gw).chat.completions.create(
        model=LOCAL, messages=[{"role": "user", "content": "hi"}], stream=True, **neutral,
        extra_body={"top_k": -1, "min_p": 0, "repetition_penalty": 1}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: hi"
    sent = simulator.state.received[-1].body
    assert sent["stream"] is True and sent["frequency_penalty"] == 0.5
    assert not {"logprobs", "top_logprobs", "presence_penalty", "logit_bias", "top_k", "min_p",
                "repetition_penalty"} & set(sent)
    # A hosted route relays vLLM's extensions as sent (an upstream that does not know them refuses them).
    client(gw).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                       extra_body={"top_k": 5})
    assert simulator.state.received[-1].body["top_k"] == 5
    # Tools stay refused: vLLM calls them only with server flags and a parser the gateway cannot know.
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    with pytest.raises(openai.BadRequestError, match="does not call tools"):
        client(gw).chat.completions.create(model=LOCAL, messages=[{"role": "user", "content": "x"}], tools=tools,
                                           logprobs=True)
    assert len(simulator.state.received) == 3


def test_logprobs_are_relayed_non_streaming_and_streaming_for_each_choice(gateway_factory, simulator) -> None:
    gw = vllm_gateway(gateway_factory, simulator)
    messages = [{"role": "user", "content": "one two"}]
    answer = client(gw).chat.completions.create(model=LOCAL, messages=messages, logprobs=True, top_logprobs=2,
                                                n=2, seed=1)
    assert len(answer.choices) == 2
    for choice in answer.choices:
        assert choice.logprobs is not None and choice.message.content == "echo: one two"
        tokens = choice.logprobs.content
        assert "".join(t.token for t in tokens) == "echo: one two" and len(tokens) == 3
        assert all(t.logprob < 0 and t.bytes == list(t.token.encode()) for t in tokens)
        assert [len(t.top_logprobs) for t in tokens] == [2, 2, 2] and tokens[0].top_logprobs[0].token == "echo:"
    assert [r.body["logprobs"] for r in simulator.state.received] == [True, True]  # one request per choice
    with client(gw).chat.completions.with_streaming_response.create(
            model=LOCAL, messages=messages, logprobs=True, top_logprobs=2, n=2, seed=1, stream=True) as response:
        assert response.headers["x-draftgate-route"] == "local"
        chunks = list(response.parse())
    for index in (0, 1):
        assert streamed_logprobs(chunks, index) == [t.model_dump() for t in answer.choices[index].logprobs.content]
    plain = client(gw).chat.completions.create(model=LOCAL, messages=messages)
    assert plain.choices[0].logprobs is None and "logprobs" not in simulator.state.received[-1].body


def test_a_cascade_over_vllm_drafts_requests_with_logprobs(gateway_factory, simulator) -> None:
    """The in-process engine's cascade sends such requests straight to its target; vLLM's drafts them, serves
    the draft's logprobs with it, and a failed draft is still never streamed (the target's answer is)."""
    gw = vllm_gateway(gateway_factory, simulator, CASCADE)
    drafts = ["42", "42", "forty-two", "forty-two"]
    simulator.state.reply_fn = lambda body: drafts.pop(0) if body["model"] == "diffusiongemma" else "7"
    ask: dict[str, Any] = {"model": "auto", "messages": [{"role": "user", "content": "6 * 7?"}], "logprobs": True,
                           "top_logprobs": 1, "frequency_penalty": 0.2, "extra_body": {"top_k": 4}}
    raw = client(gw).chat.completions.with_raw_response.create(**ask)
    assert raw.headers["x-draftgate-route"] == "local"
    answer = raw.parse()
    assert answer.choices[0].message.content == "42"
    assert [(t.token, len(t.top_logprobs)) for t in answer.choices[0].logprobs.content] == [("42", 1)]
    sent = simulator.state.received[-1].body
    assert sent["model"] == "diffusiongemma" and sent["top_k"] == 4 and sent["logprobs"] is True
    with client(gw).chat.completions.with_streaming_response.create(**ask, stream=True) as response:
        assert response.headers["x-draftgate-route"] == "local"
        chunks = list(response.parse())
    assert streamed_logprobs(chunks) == [t.model_dump() for t in answer.choices[0].logprobs.content]

    raw = client(gw).chat.completions.with_raw_response.create(**ask)  # the draft fails its regex: escalated
    assert raw.headers["x-draftgate-route"] == "escalated" and raw.parse().choices[0].message.content == "7"
    assert raw.parse().choices[0].logprobs.content[0].token == "7"  # the target's own logprobs
    with client(gw).chat.completions.with_streaming_response.create(**ask, stream=True) as response:
        assert response.headers["x-draftgate-route"] == "escalated"
        chunks = list(response.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "7"  # no part of the draft
    assert [r.body["model"] for r in simulator.state.received] == [
        "diffusiongemma", "diffusiongemma", "diffusiongemma", "gpt-4o-mini", "diffusiongemma", "gpt-4o-mini"]
    assert all(r.body["logprobs"] is True for r in simulator.state.received)
    # vLLM's top_k steered the drafts; the target (OpenAI refuses it) gets the request without it.
    assert [r.body.get("top_k") for r in simulator.state.received] == [4, 4, 4, None, 4, None]
    assert raw.parse().model_extra["draftgate"]["escalation"]["dropped_params"] == ["top_k"]
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and row.route == "escalated" and row.wasted_draft_usd > 0
    assert row.detail["escalation"]["dropped_params"] == ["top_k"]


def test_route_explain_decides_with_the_configured_backends_capabilities(tmp_path: Path) -> None:
    """`route explain` builds its planner without loading a model: it still knows what each backend applies."""
    request = {"model": LOCAL, "messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_k": 5}
    (tmp_path / "req.json").write_text(json.dumps(request))
    for backend, local in (("transformers", ""), ("vllm", "  backend: vllm\n  api_base: http://127.0.0.1:9/v1\n")):
        (tmp_path / "draftgate.yaml").write_text(f"local:\n  enabled: true\n{local}")
        result = draftgate("route", "explain", "req.json", "--config", "draftgate.yaml", cwd=tmp_path)
        if backend == "vllm":
            assert result.returncode == 0 and f"decision: local ({LOCAL})" in result.stdout, result.stderr
        else:
            assert result.returncode == 2 and "does not return `logprobs`" in result.stderr, result.stdout


def test_the_vllm_servers_api_key_is_sent_as_a_bearer_token(gateway_factory, simulator, monkeypatch) -> None:
    """A vLLM server started with `--api-key` refuses every request without it (a 401 for each local request);
    `local.api_key` takes it, from the environment like any key, and sends it as vLLM expects."""
    monkeypatch.setenv("DRAFTGATE_TEST_VLLM_KEY", "sk-vllm-secret-123")
    pool = (f"local:\n  enabled: true\n  backend: vllm\n  api_base: {simulator.base_url}\n"
            "  api_key: os.environ/DRAFTGATE_TEST_VLLM_KEY\n")
    gw = gateway_factory(hosted_config(simulator.base_url, local=True).replace("local:\n  enabled: true\n", pool))
    answer = client(gw).chat.completions.create(model=LOCAL, messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "echo: hi"
    chunks = list(client(gw).chat.completions.create(model=LOCAL, messages=[{"role": "user", "content": "hi"}],
                                                     stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: hi"
    assert [r.headers.get("authorization") for r in simulator.state.received] == ["Bearer sk-vllm-secret-123"] * 2
