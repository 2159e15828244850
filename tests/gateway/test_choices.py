"""`n` choices through the real gateway: relayed to hosted models, n rows of the local engine's batch,
and straight to the escalation target on a cascade route (one verdict cannot cover n drafts)."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import hosted_config
from tests.gateway.test_chat_hosted import client, flushed_db, litellm_price
from tests.gateway.test_local_route import local_config

SORT = [{"role": "user", "content": "Sort: 3, 1, 2"}]


def test_hosted_n_is_relayed_and_every_choice_is_billed(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    raw = client(gw).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello there world"}], n=3)
    completion = raw.parse()
    assert [c.index for c in completion.choices] == [0, 1, 2]
    assert simulator.state.received[-1].body["n"] == 3
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (3, 12)
    inp, out = litellm_price("gpt-4o-mini")
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and (row.prompt_tokens, row.completion_tokens) == (3, 12)
    assert row.hosted_cost_usd == pytest.approx(3 * inp + 12 * out, rel=1e-6)

    stream = client(gw).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "a b"}],
                                                n=2, stream=True)
    texts = {0: "", 1: ""}
    finished = set()
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished.add(choice.index)
    assert texts == {0: "echo: a b", 1: "echo: a b"} and finished == {0, 1}


def test_local_n_choices_are_seeded_rows_billed_together(gateway_factory, simulator, random_checkpoint) -> None:
    gw = gateway_factory(local_config(simulator.base_url, random_checkpoint))
    sdk = client(gw)
    raw = sdk.chat.completions.with_raw_response.create(model="local/diffusiongemma", messages=SORT, n=3,
                                                        max_tokens=12, seed=40, temperature=1.0)
    many = raw.parse()
    singles = [sdk.chat.completions.create(model="local/diffusiongemma", messages=SORT, max_tokens=12,
                                           seed=40 + i, temperature=1.0) for i in range(3)]
    # Choice i is the answer to the same request seeded seed + i: repeatable, and the choices differ.
    assert [c.message.content for c in many.choices] == [s.choices[0].message.content for s in singles]
    assert [c.index for c in many.choices] == [0, 1, 2]
    assert len({c.message.content for c in many.choices}) > 1  # random weights: distinct seeds, distinct text
    assert many.usage.prompt_tokens == singles[0].usage.prompt_tokens  # the prompt is billed once
    assert many.usage.completion_tokens == sum(s.usage.completion_tokens for s in singles)
    extension = many.model_extra["draftgate"]
    assert [c["index"] for c in extension["choices"]] == [0, 1, 2]
    assert extension["confidence"] == extension["choices"][0]["confidence"]
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and row.route == "local" and row.detail["choices"] == 3
    assert row.completion_tokens == many.usage.completion_tokens
    assert row.local_cost_usd == pytest.approx(row.device_seconds) and row.device_seconds > 0  # $3600 per hour
    assert float(raw.headers["x-draftgate-cost-usd"]) == pytest.approx(row.local_cost_usd, rel=1e-6)
    assert len(row.detail["choice_confidence"]) == 3

    chunks = list(sdk.chat.completions.create(model="local/diffusiongemma", messages=SORT, n=3, max_tokens=12,
                                              seed=40, temperature=1.0, stream=True,
                                              stream_options={"include_usage": True}))
    texts = {i: "".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == i)
             for i in range(3)}
    assert texts == {i: c.message.content for i, c in enumerate(many.choices)}  # streamed or not, same choices
    assert sorted(c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason) == [0, 1, 2]
    assert chunks[-1].usage.completion_tokens == many.usage.completion_tokens

    for stream in (False, True):  # more choices than an idle engine holds (batch 8 + queue 64): a 400, not a
        with pytest.raises(openai.BadRequestError, match="more choices than the local model can queue") as info:
            sdk.chat.completions.create(model="local/diffusiongemma", messages=SORT, n=73, stream=stream)  # (a 429
        assert info.value.param == "n"  # forever)
        assert info.value.response.headers["x-draftgate-route"] == "none"  # as a refused `logprobs`: no route
        row = flushed_db(gw).get_record(info.value.response.headers["x-draftgate-request-id"])  # served it, and
        assert row is not None and (row.route, row.status_code) == ("none", 400)  # it is out of the local share

    greedy = sdk.chat.completions.create(model="local/diffusiongemma", messages=SORT, n=2, max_tokens=12,
                                         temperature=0)
    assert greedy.choices[0].message.content == greedy.choices[1].message.content  # greedy: n copies
    assert simulator.state.received == []


def test_a_cascade_sends_n_choices_to_its_escalation_target(gateway_factory, simulator, random_checkpoint) -> None:
    rules = ("policies:\n  default:\n    cascade:\n      escalate_to: gpt-4o-mini\n"
             "      verifiers: [{regex: {pattern: '.+'}}]\n")
    gw = gateway_factory(local_config(simulator.base_url, random_checkpoint, rules))
    raw = client(gw).chat.completions.with_raw_response.create(model="auto", messages=SORT, n=2, max_tokens=12)
    assert raw.headers["x-draftgate-route"] == "hosted"
    assert len(raw.parse().choices) == 2 and simulator.state.received[-1].body["n"] == 2
    one = client(gw).chat.completions.with_raw_response.create(model="auto", messages=SORT, max_tokens=12)
    assert one.headers["x-draftgate-route"] in ("local", "escalated")  # one choice: drafted as before
