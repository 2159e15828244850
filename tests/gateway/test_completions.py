"""OpenAI's legacy POST /v1/completions through the real gateway: the openai SDK's `client.completions.create`,
served as a chat request (the prompt as one user message) by the hosted, local and policy routes alike."""

from __future__ import annotations

import time

import httpx
import openai
import orjson
import pytest
from openai.types import Completion

from tests.conftest import MASTER_KEY, hosted_config
from tests.gateway.test_chat_hosted import client, flushed_db, litellm_price
from tests.gateway.test_local_route import local_config

AUTH = {"authorization": f"Bearer {MASTER_KEY}"}


def _events(reply: httpx.Response) -> list[bytes]:
    return [line.removeprefix(b"data: ") for line in reply.content.split(b"\n\n") if line.startswith(b"data: ")]


def test_a_completion_is_served_as_a_chat_request_and_recorded(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    raw = client(gw).completions.with_raw_response.create(model="gpt-4o-mini", prompt="hello there world",
                                                          user="u-1", temperature=0.2)
    completion = raw.parse()
    assert completion.object == "text_completion" and completion.id.startswith("cmpl-")
    assert [(c.text, c.index, c.logprobs, c.finish_reason) for c in completion.choices] == [
        ("echo: hello there world", 0, None, "stop")]
    assert completion.usage is not None and (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (3, 4)
    Completion.model_validate(orjson.loads(raw.content), strict=True)  # OpenAI's exact types

    sent = simulator.state.received[-1].body  # a chat request, the prompt its one user message
    assert sent["messages"] == [{"role": "user", "content": "hello there world"}] and "prompt" not in sent
    assert sent["max_tokens"] == 16  # OpenAI's default for completions, not the model's whole window
    assert (sent["model"], sent["temperature"], sent["user"]) == ("gpt-4o-mini", 0.2, "u-1")

    inp, out = litellm_price("gpt-4o-mini")
    assert raw.headers["x-draftgate-route"] == "hosted"
    assert float(raw.headers["x-draftgate-cost-usd"]) == pytest.approx(3 * inp + 4 * out, rel=1e-6)
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and row.detail is not None and row.detail["endpoint"] == "completions"
    assert (row.route, row.model_alias, row.prompt_tokens, row.completion_tokens, row.end_user, row.status_code) == (
        "hosted", "gpt-4o-mini", 3, 4, "u-1", 200)
    assert row.hosted_cost_usd == pytest.approx(3 * inp + 4 * out, rel=1e-6)


def test_a_streamed_completion_is_text_completion_chunks(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    with client(gw).completions.with_streaming_response.create(
            model="gpt-4o-mini", prompt=["one two three four"], max_tokens=30, stream=True,
            stream_options={"include_usage": True}) as response:
        assert response.headers["x-draftgate-route"] == "hosted"
        request_id = response.headers["x-draftgate-request-id"]
        chunks = list(response.parse())
    assert all(c.object == "text_completion" and c.id == chunks[0].id and c.id.startswith("cmpl-") for c in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "echo: one two three four"
    assert chunks[-2].choices[0].finish_reason == "stop" and chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    assert simulator.state.received[-1].body["messages"] == [{"role": "user", "content": "one two three four"}]
    row = flushed_db(gw).get_record(request_id)
    assert row is not None and row.stream and row.detail is not None and row.detail["endpoint"] == "completions"
    assert (row.prompt_tokens, row.completion_tokens, row.status) == (4, 5, "ok")

    # the wire as OpenAI streams it: no chat fields, no role-only opening chunk, then [DONE]
    reply = httpx.post(gw.url + "/v1/completions", headers=AUTH, timeout=30,
                       json={"model": "gpt-4o-mini", "prompt": "a b", "stream": True})
    events = _events(reply)
    assert events[-1] == b"[DONE]"
    bodies = [orjson.loads(e) for e in events[:-1]]
    assert all(set(b) >= {"id", "object", "created", "model", "choices"} and "delta" not in str(b) for b in bodies)
    assert all(set(b["choices"][0]) == {"text", "index", "logprobs", "finish_reason"} for b in bodies)
    assert bodies[0]["choices"][0]["text"] != "" and "usage" not in bodies[-1]


def test_logprobs_come_back_in_the_completions_shape(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    completion = client(gw).completions.create(model="gpt-4o-mini", prompt="red green", logprobs=2)
    assert simulator.state.received[-1].body["logprobs"] is True
    assert simulator.state.received[-1].body["top_logprobs"] == 2
    choice = completion.choices[0]
    assert choice.logprobs is not None and choice.logprobs.tokens is not None
    assert "".join(choice.logprobs.tokens) == choice.text
    assert choice.logprobs.text_offset == [sum(map(len, choice.logprobs.tokens[:i]))
                                           for i in range(len(choice.logprobs.tokens))]
    assert all(len(top) == 2 for top in choice.logprobs.top_logprobs or [])
    streamed = list(client(gw).completions.create(model="gpt-4o-mini", prompt="red green", logprobs=2, stream=True))
    tokens = [t for c in streamed if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens or []]
    offsets = [o for c in streamed if c.choices and c.choices[0].logprobs for o in c.choices[0].logprobs.text_offset or []]
    assert tokens == choice.logprobs.tokens and offsets == choice.logprobs.text_offset  # counted across chunks


def test_the_local_model_and_policy_rules_serve_completions(gateway_factory, simulator, random_checkpoint) -> None:
    rules = ("policies:\n  default: requested\n  rules:\n    - name: extract-local\n"
             "      when: {metadata: {task: extract}}\n      action: local\n")
    gw = gateway_factory(local_config(simulator.base_url, random_checkpoint, rules))
    raw = client(gw).completions.with_raw_response.create(model="local/diffusiongemma", prompt="What is 2 + 2?",
                                                          max_tokens=8, seed=7)
    completion = raw.parse()
    assert raw.headers["x-draftgate-route"] == "local" and completion.choices[0].finish_reason in ("stop", "length")
    chat = client(gw).chat.completions.create(model="local/diffusiongemma", max_tokens=8, seed=7,
                                              messages=[{"role": "user", "content": "What is 2 + 2?"}])
    assert completion.choices[0].text == chat.choices[0].message.content  # the same request, rendered differently
    assert completion.usage is not None and completion.usage.completion_tokens <= 8
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and row.route == "local" and row.device_seconds > 0
    assert row.detail is not None and row.detail["endpoint"] == "completions"
    streamed = list(client(gw).completions.create(model="local/diffusiongemma", prompt="What is 2 + 2?",
                                                  max_tokens=8, seed=7, stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == completion.choices[0].text

    routed = client(gw).completions.with_raw_response.create(model="gpt-4o-mini", prompt="x", max_tokens=4,
                                                             extra_body={"metadata": {"task": "extract"}})
    assert routed.headers["x-draftgate-route"] == "local" and routed.headers["x-draftgate-rule"].startswith(
        "extract-local")
    ruled = flushed_db(gw).get_record(routed.headers["x-draftgate-request-id"])
    assert ruled is not None and ruled.rule == "extract-local" and ruled.detail["endpoint"] == "completions"
    with pytest.raises(openai.BadRequestError) as info:  # the in-process model returns no logprobs: said, not dropped
        client(gw).completions.create(model="local/diffusiongemma", prompt="x", logprobs=1)
    assert info.value.code == "unsupported_parameter" and info.value.param == "logprobs"
    with pytest.raises(openai.BadRequestError) as info:  # named as the client sent it: it sent no `messages`
        client(gw).completions.create(model="local/diffusiongemma", prompt="x " * 3000)
    assert info.value.code == "context_length_exceeded" and info.value.param == "prompt"


@pytest.mark.parametrize(("extra", "param"), [
    ({"prompt": ["first", "second"]}, "prompt"),
    ({"prompt": [1, 2, 3]}, "prompt"),
    ({"prompt": [[1, 2], [3]]}, "prompt"),
    ({"suffix": "end"}, "suffix"),
    ({"echo": True}, "echo"),
    ({"best_of": 3}, "best_of"),
])
def test_what_a_chat_request_cannot_express_is_a_400_naming_it(gateway_factory, simulator, extra, param) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    with pytest.raises(openai.BadRequestError) as info:
        client(gw).completions.create(**{"model": "gpt-4o-mini", "prompt": "x", **extra})
    assert (info.value.code, info.value.param, info.value.type) == ("unsupported_parameter", param,
                                                                     "invalid_request_error")
    assert "not supported" in info.value.message and simulator.state.received == []


def test_bad_requests_unknown_models_and_keys_get_openai_errors(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    with pytest.raises(openai.BadRequestError) as unknown_field:
        client(gw).completions.create(model="gpt-4o-mini", prompt="x", extra_body={"promt": "typo"})
    assert (unknown_field.value.code, unknown_field.value.param) == ("unknown_parameter", "promt")
    with pytest.raises(openai.BadRequestError) as strict:
        client(gw).completions.create(model="gpt-4o-mini", prompt="x", extra_body={"max_tokens": "5"})
    assert strict.value.param == "max_tokens"
    missing = httpx.post(gw.url + "/v1/completions", headers=AUTH, timeout=30)
    assert missing.status_code == 400 and "`model` and `prompt`" in missing.json()["error"]["message"]
    no_prompt = httpx.post(gw.url + "/completions", headers=AUTH, json={"model": "gpt-4o-mini"}, timeout=30)
    assert no_prompt.status_code == 400 and no_prompt.json()["error"]["param"] == "prompt"
    curl = httpx.post(gw.url + "/v1/completions", content=b'{"model": "gpt-4o-mini", "prompt": "hi"}', timeout=30,
                      headers={**AUTH, "content-type": "application/x-www-form-urlencoded"})  # what `curl -d` sends
    assert curl.status_code == 200 and curl.json()["choices"][0]["text"] == "echo: hi"

    with pytest.raises(openai.NotFoundError) as not_found:
        client(gw).completions.create(model="no-such-model", prompt="x")
    assert not_found.value.code == "model_not_found"
    row = flushed_db(gw).get_record(not_found.value.response.headers["x-draftgate-request-id"])
    assert row is not None and (row.status_code, row.route) == (404, "none")
    assert row.detail is not None and row.detail["endpoint"] == "completions"
    with pytest.raises(openai.AuthenticationError):
        client(gw, "sk-wrong").completions.create(model="gpt-4o-mini", prompt="x")
    assert len(simulator.state.received) == 1  # the curl request's only


def test_the_response_cache_answers_a_repeated_completion(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url, "cache:\n  enabled: true\n"))
    first = client(gw).completions.with_raw_response.create(model="gpt-4o-mini", prompt="cache me", seed=1)
    again = client(gw).completions.with_raw_response.create(model="gpt-4o-mini", prompt="cache me", seed=1)
    assert (first.headers["x-draftgate-cache"], again.headers["x-draftgate-cache"]) == ("miss", "hit")
    assert again.headers["x-draftgate-route"] == "cache" and len(simulator.state.received) == 1
    hit = again.parse()
    assert hit.object == "text_completion" and hit.id.startswith("cmpl-")
    assert hit.choices[0].text == first.parse().choices[0].text == "echo: cache me"
    with client(gw).completions.with_streaming_response.create(model="gpt-4o-mini", prompt="cache me", seed=1,
                                                               stream=True) as response:
        assert response.headers["x-draftgate-cache"] == "hit"
        chunks = list(response.parse())
    assert all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "echo: cache me"
    row = flushed_db(gw).get_record(again.headers["x-draftgate-request-id"])
    assert row is not None and row.route == "cache" and row.detail["endpoint"] == "completions"


def test_a_stream_left_midway_is_recorded_cancelled_with_what_it_used(gateway_factory, simulator,
                                                                      random_checkpoint) -> None:
    """The completions stream wraps the chat pipeline's: a client gone midway is a cancelled row charged its device
    time, as for chat, never a lost row or a silent $0."""
    config = local_config(simulator.base_url, random_checkpoint).replace("max_tokens: 24", "max_tokens: 512")
    gw = gateway_factory(config)
    body = {"model": "local/diffusiongemma", "prompt": "tell me everything", "max_tokens": 512, "seed": 1,
            "stream": True}
    with httpx.stream("POST", gw.url + "/v1/completions", headers=AUTH, json=body, timeout=60) as reply:
        request_id = reply.headers["x-draftgate-request-id"]
        first = next(reply.iter_lines())
        assert orjson.loads(first.removeprefix("data: "))["object"] == "text_completion"
    deadline = time.monotonic() + 20
    while (row := flushed_db(gw).get_record(request_id)) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert row is not None and (row.status, row.status_code) == ("cancelled", 499)
    assert row.device_seconds > 0 and 0 < row.completion_tokens < 512
    assert row.detail is not None and row.detail["endpoint"] == "completions"
