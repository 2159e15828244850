"""What a client of OpenAI's API relies on beyond the happy path: strict types, content parts, tool_choice,
the SDK's retry and request-id headers, the upstream's own error codes, a usage chunk when one was asked for."""

from __future__ import annotations

import inspect

import httpx
import openai
import pytest

from gateway.simulator import Fault
from tests.conftest import MASTER_KEY, hosted_config
from tests.gateway.test_chat_hosted import client, flushed_db
from tests.gateway.test_local_route import local_config

AUTH = {"authorization": f"Bearer {MASTER_KEY}"}
USER = [{"role": "user", "content": "hi"}]


def _post(gw, body: dict, **kwargs) -> httpx.Response:  # type: ignore[no-untyped-def, type-arg]
    return httpx.post(gw.url + "/v1/chat/completions", headers=AUTH, json=body, timeout=30, **kwargs)


@pytest.mark.parametrize(("extra", "param"), [
    ({"max_tokens": "5"}, "max_tokens"), ({"temperature": "0.5"}, "temperature"), ({"stream": "true"}, "stream"),
    ({"n": True}, "n"), ({"max_tokens": 5.0}, "max_tokens"), ({"seed": "7"}, "seed"),
])
def test_wrong_json_types_are_refused_not_coerced(gateway_factory, simulator, extra: dict, param: str) -> None:  # type: ignore[type-arg]
    gw = gateway_factory(hosted_config(simulator.base_url))
    reply = _post(gw, {"model": "gpt-4o-mini", "messages": USER, **extra})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == param, reply.text
    assert not simulator.state.received  # nothing was sent upstream
    assert _post(gw, {"model": "gpt-4o-mini", "messages": USER, "temperature": 1, "max_tokens": 5}).status_code == 200


@pytest.mark.parametrize(("content", "param"), [
    ([{"text": "Sort these numbers: 17, 3, 8"}], "messages[0].content"),  # no type: it was read as nothing
    ([], "messages[0].content"),
    ([{"type": "text"}], "messages[0].content"),
    ([{"type": "text", "text": 5}], "messages[0].content"),
    (None, "messages[0]"),
])
def test_malformed_content_parts_are_a_400_with_openai_param_names(gateway_factory, simulator, content: object,
                                                                    param: str) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    message: dict[str, object] = {"role": "user"}
    if content is not None:
        message["content"] = content
    reply = _post(gw, {"model": "gpt-4o-mini", "messages": [message]})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == param, reply.text
    # an assistant turn with tool calls may leave content out; a typed text part is fine
    ok = _post(gw, {"model": "gpt-4o-mini", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                              "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        {"role": "function", "name": "f", "content": None}], "stream": True,  # the SDK's types allow both nulls
        "stream_options": {"include_usage": None}})
    assert ok.status_code == 200, ok.text


def test_tool_choice_without_tools_is_refused_and_sdk_parameters_are_accepted(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    for extra, param in (({"tool_choice": "required"}, "tool_choice"), ({"tools": []}, "tools"),
                         ({"function_call": "auto"}, "function_call")):
        reply = _post(gw, {"model": "gpt-4o-mini", "messages": USER, **extra})
        assert reply.status_code == 400 and param in reply.json()["error"]["message"], reply.text
    # In the SDK's create() signature: relayed to a hosted model, not refused as unknown.
    functions = [{"name": "f", "parameters": {"type": "object", "properties": {}}}]
    for extra in ({"functions": functions, "function_call": "auto"}, {"web_search_options": {}},
                  {"prompt_cache_retention": "24h"}, {"tool_choice": "none"}):
        reply = _post(gw, {"model": "gpt-4o-mini", "messages": USER, **extra})
        assert reply.status_code == 200, (extra, reply.text)
        assert all(simulator.state.received[-1].body[k] == v for k, v in extra.items())


@pytest.mark.parametrize(("extra", "param"), [
    ({"tool_choice": "required"}, "tool_choice"), ({"tools": []}, "tools"), ({"function_call": "auto"}, "function_call"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
])
def test_a_parameter_refused_for_want_of_another_is_named_in_param(gateway_factory, simulator, extra: dict,  # type: ignore[type-arg]
                                                                    param: str) -> None:
    """OpenAI names the parameter (`param: "tool_choice"`); these cross-field checks answered `param: null`."""
    gw = gateway_factory(hosted_config(simulator.base_url))
    reply = _post(gw, {"model": "gpt-4o-mini", "messages": USER, **extra})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == param, reply.text
    assert reply.json()["error"]["message"].startswith(f"{param}: "), reply.text


def test_every_parameter_of_the_sdks_create_is_accepted(gateway_factory, simulator, random_checkpoint) -> None:
    """The README promises the parameters of the SDK's create(): the locked SDK's `moderation` and
    `prompt_cache_options` were 400 "Unrecognized request argument". Hosted, they are relayed as sent; the local
    model runs no moderation, so it refuses that one rather than answer unmoderated."""
    from openai.resources.chat.completions import Completions

    from gateway.schemas import ChatRequest

    sdk = set(inspect.signature(Completions.create).parameters) - {"self", "extra_headers", "extra_query",
                                                                    "extra_body", "timeout"}
    assert sdk <= set(ChatRequest.model_fields), sorted(sdk - set(ChatRequest.model_fields))
    gw = gateway_factory(local_config(simulator.base_url, random_checkpoint))
    sent = {"moderation": {"model": "omni-moderation-latest"}, "prompt_cache_options": {"mode": "implicit"}}
    reply = _post(gw, {"model": "gpt-4o-mini", "messages": USER, **sent})
    assert reply.status_code == 200, reply.text
    assert all(simulator.state.received[-1].body[k] == v for k, v in sent.items())
    cached = _post(gw, {"model": "local/diffusiongemma", "messages": USER, "max_tokens": 4,
                        "prompt_cache_options": {"mode": "implicit"}})
    assert cached.status_code == 200, cached.text
    moderated = _post(gw, {"model": "local/diffusiongemma", "messages": USER, "max_tokens": 4,
                           "moderation": {"model": "omni-moderation-latest"}})
    assert moderated.status_code == 400, moderated.text
    assert {k: moderated.json()["error"][k] for k in ("code", "param")} == {"code": "unsupported_parameter",
                                                                            "param": "moderation"}
    assert "moderation" in moderated.json()["error"]["message"]
    # The SDK types `stream` as Optional[Literal[False]]: None is sent as null, which OpenAI takes as not streamed.
    unstreamed = client(gw).chat.completions.create(model="local/diffusiongemma", messages=USER, max_tokens=4,
                                                    stream=None)
    assert unstreamed.object == "chat.completion" and unstreamed.choices[0].finish_reason in ("stop", "length")


def test_local_route_refuses_what_it_cannot_honour(gateway_factory, simulator, random_checkpoint) -> None:
    gw = gateway_factory(local_config(simulator.base_url, random_checkpoint))
    functions = [{"name": "f", "parameters": {"type": "object", "properties": {}}}]
    image = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]
    for extra, words, param in (
            ({"tool_choice": "required"}, "tool_choice", "tool_choice"), ({"functions": functions}, "functions", "functions"),
            ({"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}, "audio", "audio"),
            ({"modalities": ["text", "audio"]}, "audio", "modalities"), ({"web_search_options": {}}, "web", "web_search_options"),
            ({"logprobs": True}, "logprobs", "logprobs"), ({"top_k": 5}, "top_k", "top_k"),
            ({"messages": [{"role": "user", "content": image}]}, "text only", "messages")):
        reply = _post(gw, {"model": "local/diffusiongemma", "messages": USER, "max_tokens": 4, **extra})
        assert reply.status_code == 400 and words in reply.json()["error"]["message"], reply.text
        assert reply.json()["error"]["param"] == param, reply.text  # named, as OpenAI names the parameter


def test_a_local_output_invalid_reply_tells_the_sdk_not_to_retry(gateway_factory, simulator, random_checkpoint) -> None:
    gw = gateway_factory(local_config(simulator.base_url, random_checkpoint))
    sdk = openai.OpenAI(base_url=gw.base_url, api_key=MASTER_KEY, max_retries=2, timeout=30)  # the SDK's default
    with pytest.raises(openai.InternalServerError) as info:
        sdk.chat.completions.create(model="local/diffusiongemma", messages=USER, max_tokens=8, temperature=0,  # type: ignore[arg-type]
                                    response_format={"type": "json_object"})
    assert info.value.response.headers["x-should-retry"] == "false"
    assert flushed_db(gw).count_records() == 1  # one draft spent, not three


def test_request_ids_and_bodies_without_a_json_content_type(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    raw = client(gw).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=USER)  # type: ignore[arg-type]
    assert raw.request_id == raw.headers["x-draftgate-request-id"]  # the SDK's _request_id
    body = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'
    for content_type in ("application/x-www-form-urlencoded", "text/plain", None):  # curl -d, and none at all
        headers = {**AUTH, **({"content-type": content_type} if content_type else {})}
        reply = httpx.post(gw.url + "/v1/chat/completions", content=body, headers=headers, timeout=30)
        assert reply.status_code == 200, (content_type, reply.text)
    bad = httpx.post(gw.url + "/v1/chat/completions", content=b'{"model": "\xff\xfe"}',
                     headers={**AUTH, "content-type": "application/json"}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
    wrong_method = httpx.get(gw.url + "/v1/chat/completions", headers=AUTH)
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    listed = httpx.get(gw.url + "/v1/models/", headers=AUTH)
    assert listed.status_code == 200 and listed.json()["object"] == "list"


def test_an_upstream_refusal_keeps_its_code_and_param(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    simulator.state.faults.append(Fault(status=400, message="This model's maximum context length is 128000 tokens.",
                                  code="context_length_exceeded", param="messages"))
    with pytest.raises(openai.BadRequestError) as info:
        client(gw).chat.completions.create(model="gpt-4o-mini", messages=USER)  # type: ignore[arg-type]
    assert info.value.code == "context_length_exceeded" and info.value.param == "messages"
    simulator.state.faults.append(Fault(status=400, message="no code"))
    with pytest.raises(openai.BadRequestError) as plain:
        client(gw).chat.completions.create(model="gpt-4o-mini", messages=USER)  # type: ignore[arg-type]
    assert plain.value.code == "upstream_rejected"


def test_a_stream_whose_upstream_sent_no_usage_still_ends_with_the_usage_chunk_asked_for(gateway_factory,
                                                                                        simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    simulator.state.faults.append(Fault(no_usage=True))
    chunks = list(client(gw).chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True,  # type: ignore[arg-type]
                                                     stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens > 0 and chunks[-1].usage.completion_tokens > 0
    assert chunks[-1].id == chunks[0].id
    row = next(iter(flushed_db(gw).iter_records()))  # the one request
    assert (row.prompt_tokens, row.completion_tokens) == (chunks[-1].usage.prompt_tokens,
                                                          chunks[-1].usage.completion_tokens)
    assert row.detail["usage_estimated"] is True


def test_the_developer_role_is_the_system_prompt_for_the_local_model() -> None:
    from local_engine.prompts import flatten

    assert flatten([{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"}]) == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
