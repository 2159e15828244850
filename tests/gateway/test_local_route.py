"""The local route through the real gateway: the openai SDK against the in-process engine."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import hosted_config
from tests.gateway.test_chat_hosted import client, flushed_db


def local_config(sim_url: str, checkpoint: Path, extra: str = "") -> str:
    return hosted_config(sim_url, extra, local=True).replace(
        "local:\n  enabled: true\n", f"local:\n  enabled: true\n  model: {checkpoint}\n  max_tokens: 24\n"
        "  device_usd_per_hour: 3600\n")


def test_local_alias_non_streaming_and_streaming(gateway_factory, simulator, random_checkpoint) -> None:
    gw = gateway_factory(local_config(simulator.base_url, random_checkpoint))
    assert httpx.get(gw.url + "/readyz").json()["checks"] == {"database": True, "local_model": True}
    assert client(gw).models.retrieve("local/diffusiongemma").id == "local/diffusiongemma"  # a slash in the id
    raw = client(gw).chat.completions.with_raw_response.create(
        model="local/diffusiongemma", messages=[{"role": "user", "content": "What is 2 + 2?"}], max_tokens=12,
        seed=7)
    completion = raw.parse()
    assert raw.headers["x-draftgate-route"] == "local" and "steps_per_canvas" in raw.headers["x-draftgate-confidence"]
    assert completion.usage.completion_tokens <= 12
    assert completion.model_extra["draftgate"]["confidence"]["steps_per_canvas"]
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and row.route == "local" and row.device_seconds > 0
    assert row.local_cost_usd == pytest.approx(row.device_seconds)  # $3600 per device-hour
    assert float(raw.headers["x-draftgate-cost-usd"]) == pytest.approx(row.device_seconds, rel=1e-6)
    assert row.completion_tokens == completion.usage.completion_tokens and row.prompt_tokens > 0
    assert simulator.state.received == []

    with client(gw).chat.completions.with_streaming_response.create(
            model="auto", messages=[{"role": "user", "content": "Sort: 3, 1"}], stream=True, max_tokens=20,
            seed=7, stream_options={"include_usage": True}) as response:
        assert response.headers["x-draftgate-route"] == "local"
        chunks = list(response.parse())
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage is not None and chunks[-2].choices[0].finish_reason in ("stop", "length")
    again = client(gw).chat.completions.create(model="auto", messages=[{"role": "user", "content": "Sort: 3, 1"}],
                                               max_tokens=20, seed=7)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == again.choices[0].message.content  # same seed, same answer, streamed or not


def test_a_shared_system_prompt_is_reported_as_cached_prompt_tokens(gateway_factory, simulator,
                                                                    random_checkpoint) -> None:
    gw = gateway_factory(local_config(simulator.base_url, random_checkpoint))
    system = {"role": "system", "content": "You answer billing questions for ACME. Reply with the result only. " * 4}
    raws = [client(gw).chat.completions.with_raw_response.create(
        model="local/diffusiongemma", messages=[system, {"role": "user", "content": f"What is {i} + 1?"}],
        max_tokens=8, seed=i) for i in range(3)]
    usages = [raw.parse().usage for raw in raws]
    with client(gw).chat.completions.with_streaming_response.create(
            model="local/diffusiongemma", messages=[system, {"role": "user", "content": "Sort: 2, 1"}],
            stream=True, max_tokens=8, seed=3, stream_options={"include_usage": True}) as response:
        usages.append(list(response.parse())[-1].usage)
    cached = [u.prompt_tokens_details.cached_tokens for u in usages]
    # Seen once: encoded whole; seen twice: cached (its own prefix pass); then reused, streamed or not.
    assert cached[:2] == [0, 0] and cached[2] == cached[3] > 64
    assert all(u.prompt_tokens > c for u, c in zip(usages, cached, strict=True))
    rows = [flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"]) for raw in raws]
    assert [(row.detail or {}).get("cached_prompt_tokens", 0) for row in rows] == cached[:3]
    # all-hosted, gpt-4o-mini (the reference) would have cached that prefix too: its cached tokens at its cached
    # rate ($0.075 per million instead of $0.15), not in full, which overstated the savings
    third = rows[2]
    assert third is not None and third.reference_cost_usd == pytest.approx(
        ((third.prompt_tokens - cached[2]) * 0.15 + cached[2] * 0.075 + third.completion_tokens * 0.60) / 1e6)
    metric = 'draftgate_tokens_total{direction="prompt_cached",model="local/diffusiongemma",route="local"}'
    assert f"{metric} {float(2 * cached[2])}" in httpx.get(gw.url + "/metrics").text


def test_what_the_local_model_cannot_do_is_refused_clearly(gateway_factory, simulator, random_checkpoint) -> None:
    """Tools, logprobs and images would be silently missing from a local answer: a 400 says so instead."""
    gw = gateway_factory(local_config(simulator.base_url, random_checkpoint))
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    image = [{"type": "text", "text": "what is this?"},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]
    for extra, message in (({"tools": tools}, "does not call tools"),
                           ({"logprobs": True, "top_logprobs": 2}, "does not return `logprobs`"),
                           ({"presence_penalty": 0.5}, "does not apply `presence_penalty`"),
                           ({"frequency_penalty": -1}, "does not apply `frequency_penalty`"),
                           ({"logit_bias": {"42": 5}}, "does not apply `logit_bias`"),
                           ({"extra_body": {"top_k": 5}}, "does not apply `top_k`"),  # vLLM's extensions
                           ({"extra_body": {"min_p": 0.1}}, "does not apply `min_p`"),
                           ({"extra_body": {"repetition_penalty": 1.2}}, "does not apply `repetition_penalty`"),
                           ({"messages": [{"role": "user", "content": image}]}, "reads text only")):
        with pytest.raises(openai.BadRequestError) as info:
            client(gw).chat.completions.create(**{"model": "local/diffusiongemma",
                                                  "messages": [{"role": "user", "content": "x"}], **extra})
        assert message in info.value.message
    text_parts = [{"type": "text", "text": "What is 2 + 2?"}]  # text parts are still served locally
    answer = client(gw).chat.completions.create(model="local/diffusiongemma", max_tokens=4,
                                                messages=[{"role": "user", "content": text_parts}])
    assert answer.choices[0].finish_reason in ("stop", "length")
    neutral = client(gw).chat.completions.create(  # the defaults some SDKs always send are not refused
        model="local/diffusiongemma", max_tokens=4, messages=[{"role": "user", "content": "x"}],
        presence_penalty=0, frequency_penalty=0, logit_bias={}, top_p=1,
        extra_body={"top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0})
    assert neutral.choices[0].finish_reason in ("stop", "length")


def test_policy_rules_route_and_explain_in_headers(gateway_factory, simulator, random_checkpoint) -> None:
    rules = """\
policies:
  default: requested
  rules:
    - name: extract-local
      when: {metadata: {task: extract}, model: [gpt-4o-mini]}
      action: local
"""
    gw = gateway_factory(local_config(simulator.base_url, random_checkpoint, rules))
    raw = client(gw).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], metadata={"task": "extract"}, max_tokens=4)
    assert raw.headers["x-draftgate-route"] == "local"
    assert raw.headers["x-draftgate-rule"] == "extract-local (model=gpt-4o-mini, metadata.task='extract')"
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and row.rule == "extract-local"
    assert row.detail["route"]["explanation"][0]["condition"] == "model"
    other = client(gw).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], metadata={"task": "chat"})
    assert other.headers["x-draftgate-route"] == "hosted" and "x-draftgate-rule" not in other.headers
    # a request the rule's local route refuses: the refusal names the rule, as `route explain` does (row and header
    # had none)
    with pytest.raises(openai.BadRequestError) as info:
        client(gw).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}],
                                           metadata={"task": "extract"}, logprobs=True)
    headers = info.value.response.headers
    assert (headers["x-draftgate-route"], headers["x-draftgate-rule"]) == (
        "none", "extract-local (model=gpt-4o-mini, metadata.task='extract')")
    refused = flushed_db(gw).get_record(headers["x-draftgate-request-id"])
    assert refused is not None and (refused.route, refused.rule, refused.status_code) == ("none", "extract-local", 400)


def test_rules_on_p_hosted_use_the_bundled_classifier(gateway_factory, simulator, random_checkpoint) -> None:
    rules = """\
policies:
  rules:
    - name: hard
      when: {p_hosted: {gte: 0.0}}
      action: {hosted: gpt-4o-mini}
"""
    gw = gateway_factory(local_config(simulator.base_url, random_checkpoint, rules))
    raw = client(gw).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "Prove that there are infinitely many primes."}])
    assert raw.headers["x-draftgate-route"] == "hosted" and raw.headers["x-draftgate-rule"].startswith("hard (p_hosted=")
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and 0 <= row.detail["route"]["p_hosted"] <= 1


def test_the_local_alias_of_a_gateway_without_a_local_model_is_a_404(gateway_factory, simulator) -> None:
    """With `local.enabled: false`, /v1/models leaves the local alias out and GET /v1/models/{it} is a 404, but a
    chat request naming it was a 503 local_unavailable with Retry-After, which the SDK retried twice."""
    gw = gateway_factory(hosted_config(simulator.base_url))
    assert "local/diffusiongemma" not in [m.id for m in client(gw).models.list()]
    with pytest.raises(openai.NotFoundError) as info:
        client(gw).chat.completions.create(model="local/diffusiongemma", messages=[{"role": "user", "content": "hi"}])
    assert info.value.code == "model_not_found" and info.value.param == "model"
    row = flushed_db(gw).get_record(info.value.response.headers["x-draftgate-request-id"])
    assert row is not None and (row.route, row.status_code) == ("none", 404)


def test_a_stop_string_longer_than_the_text_so_far_sends_none_of_it(gateway_factory, simulator,
                                                                     random_checkpoint) -> None:
    """A stop string may span canvases, so a stream holds back its length less one. Text shorter than that
    was sliced from its end (text[:len - hold] with a negative bound): a first canvas of L characters sent its
    first L - (hold - L), the start of a stop string that matched in a later canvas; not streamed, the answer
    was cut before it."""
    gw = gateway_factory(local_config(simulator.base_url, random_checkpoint))
    user = [{"role": "user", "content": "Sort: 3, 1"}]

    def streamed(**kwargs: object) -> tuple[list[str], str | None]:
        chunks = list(client(gw).chat.completions.create(model="local/diffusiongemma", messages=user,  # type: ignore[call-overload]
                                                         stream=True, max_tokens=24, **kwargs))
        texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
        return texts, next(c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason)

    for seed in range(20):  # one whose first canvas is followed by enough text for the stop string
        texts, _ = streamed(seed=seed)
        first, answer = len(texts[0]) if texts else 0, "".join(texts)
        stop = answer[: first + first // 2 + 1]  # longer than the first canvas's text, shorter than twice it
        if first >= 2 and len(answer) >= len(stop):
            break
    else:
        raise AssertionError("no seed gave an answer longer than its first canvas")
    assert streamed(seed=seed, stop=stop) == ([], "stop")  # the stop string starts the answer: nothing to send
    whole = client(gw).chat.completions.create(model="local/diffusiongemma", messages=user, max_tokens=24, seed=seed,
                                               stop=stop)
    assert (whole.choices[0].message.content, whole.choices[0].finish_reason) == ("", "stop")


# Gemma's chat template (that of google/diffusiongemma-*) refuses a conversation whose roles do not alternate
# user/model, which an agent's `tool` turns or two user messages in a row are.
STRICT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "<start_of_turn>{{ message['role'] }}\n{{ message['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def test_messages_the_chat_template_refuses_are_a_400_not_a_500(gateway_factory, simulator, random_checkpoint,
                                                                tmp_path: Path) -> None:
    """The template's refusal was an unhandled jinja2 TemplateError: a 500 `internal_error` and a traceback in
    the log (vLLM answers 400 with the template's message), and a cascade failed instead of escalating."""
    strict = tmp_path / "strict-template"
    shutil.copytree(random_checkpoint, strict)
    (strict / "chat_template.jinja").write_text(STRICT_TEMPLATE)
    rules = "policies:\n  rules:\n    - name: drafts\n      when: {model: auto}\n      action:\n" \
            "        cascade: {escalate_to: gpt-4o-mini}\n"
    gw = gateway_factory(local_config(simulator.base_url, strict, rules))
    tool_turns = [{"role": "user", "content": "What is the weather?"},
                  {"role": "assistant", "content": None, "tool_calls": [
                      {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
                  {"role": "tool", "tool_call_id": "c1", "content": "sunny " * 600}]  # long: prepared off the loop
    for messages in (tool_turns, [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}]):
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as info:
                client(gw).chat.completions.create(model="local/diffusiongemma", messages=messages,  # type: ignore[call-overload]
                                                   stream=stream, max_tokens=8)
            assert info.value.code == "local_rejected" and "roles must alternate" in info.value.message
            row = flushed_db(gw).get_record(info.value.response.headers["x-draftgate-request-id"])
            assert row is not None and (row.status, row.status_code) == ("error", 400)
    simulator.state.replies.append("sunny")
    raw = client(gw).chat.completions.with_raw_response.create(model="auto", messages=tool_turns, max_tokens=8)
    assert raw.headers["x-draftgate-route"] == "escalated" and raw.parse().choices[0].message.content == "sunny"
