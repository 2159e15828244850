"""`response_format` on local routes: the local model cannot constrain its decoding, so every local answer is
checked against the format before it is served — a plain local route answers 502 instead of passing on
non-JSON, and a cascade escalates such a draft even when its rule lists no JSON verifier."""

from __future__ import annotations

import json
import logging

import httpx
import openai
import pytest

from local_engine.loading import BUNDLED
from tests.conftest import MASTER_KEY
from tests.gateway.test_chat_hosted import client, flushed_db
from tests.gateway.test_local_route import local_config

EXTRACT = [{"role": "user", "content": 'Extract city as JSON: {"name": "Ada", "age": 36, "city": "Oslo"}'}]
JSON_OBJECT = {"type": "json_object"}


def test_a_local_answer_that_is_not_json_is_a_502_with_its_cost_recorded(gateway_factory, simulator,
                                                                          random_checkpoint, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="draftgate")
    gw = gateway_factory(local_config(simulator.base_url, random_checkpoint))
    with pytest.raises(openai.InternalServerError) as info:
        client(gw).chat.completions.create(model="local/diffusiongemma", messages=EXTRACT, max_tokens=12,
                                           response_format=JSON_OBJECT)  # type: ignore[arg-type]
    assert info.value.status_code == 502 and info.value.body["code"] == "local_output_invalid"  # type: ignore[index]
    assert "does not match response_format" in info.value.message
    request_id = info.value.response.headers["x-draftgate-request-id"]
    row = flushed_db(gw).get_record(request_id)
    assert row is not None and (row.status, row.status_code, row.route) == ("error", 502, "local")
    assert row.device_seconds > 0 and row.local_cost_usd == pytest.approx(row.device_seconds)  # never a silent $0
    assert row.detail["response_format"]["reason"]
    # The reply says what the failed answer cost, as the ledger does; an expected failure is a log line, not a
    # traceback filed as "unhandled".
    assert float(info.value.response.headers["x-draftgate-cost-usd"]) == pytest.approx(row.local_cost_usd, abs=1e-8)
    assert info.value.response.headers["x-draftgate-route"] == "local"
    assert not [r for r in caplog.records if "unhandled" in r.getMessage() or r.exc_info]
    assert any("local_output_invalid" in r.getMessage() for r in caplog.records)
    streamed = httpx.post(gw.url + "/v1/chat/completions", timeout=30, headers={"authorization": f"Bearer {MASTER_KEY}"},
                          json={"model": "local/diffusiongemma", "messages": EXTRACT, "max_tokens": 12,
                                "stream": True, "response_format": JSON_OBJECT})
    assert streamed.status_code == 502 and streamed.json()["error"]["code"] == "local_output_invalid"
    plain = client(gw).chat.completions.create(model="local/diffusiongemma", messages=EXTRACT, max_tokens=12,
                                               response_format={"type": "text"})
    assert plain.choices[0].finish_reason in ("stop", "length")  # text asks for no format


@pytest.mark.skipif(not (BUNDLED / "model.safetensors").exists(), reason="bundled checkpoint missing")
def test_a_matching_local_answer_is_served_streamed_or_not(gateway_factory, simulator) -> None:
    gw = gateway_factory(local_config(simulator.base_url, BUNDLED))
    answer = client(gw).chat.completions.create(model="local/diffusiongemma", messages=EXTRACT, seed=1,
                                                response_format=JSON_OBJECT)  # type: ignore[arg-type]
    assert json.loads(answer.choices[0].message.content or "") == {"city": "Oslo"}
    chunks = list(client(gw).chat.completions.create(
        model="local/diffusiongemma", messages=EXTRACT, seed=1, stream=True, response_format=JSON_OBJECT,  # type: ignore[arg-type]
        stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == answer.usage.completion_tokens
    schema = {"type": "json_schema", "json_schema": {"name": "invoice", "schema": {
        "type": "object", "required": ["total"], "properties": {"total": {"type": "number"}}}}}
    with pytest.raises(openai.InternalServerError, match="total"):
        client(gw).chat.completions.create(model="local/diffusiongemma", messages=EXTRACT, seed=1,
                                           response_format=schema)  # type: ignore[arg-type]


def test_a_cascade_checks_the_requested_format_without_a_json_verifier(gateway_factory, simulator,
                                                                       random_checkpoint) -> None:
    rules = ("policies:\n  default:\n    cascade:\n      escalate_to: gpt-4o-mini\n"
             "      verifiers: [{regex: {pattern: '.*'}}]\n")
    gw = gateway_factory(local_config(simulator.base_url, random_checkpoint, rules))
    simulator.state.replies.append('{"city": "Oslo"}')
    raw = client(gw).chat.completions.with_raw_response.create(model="auto", messages=EXTRACT, max_tokens=12,
                                                               response_format=JSON_OBJECT)  # type: ignore[arg-type]
    assert raw.headers["x-draftgate-route"] == "escalated"
    assert raw.headers["x-draftgate-escalation"].startswith("response_format:")
    assert raw.parse().choices[0].message.content == '{"city": "Oslo"}'


@pytest.mark.parametrize("fmt", [
    {"type": "bogus"},
    {"type": "json_schema"},
    {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense-type"}}},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/nowhere"}}},
    {"type": "json_schema", "json_schema": {"name": "my schema", "schema": {"type": "object"}}},
], ids=["unknown-type", "no-json-schema", "no-name", "invalid-schema", "schema-not-object", "unresolvable-ref",
        "name-with-a-space"])
def test_a_malformed_response_format_is_a_400_before_any_compute(gateway_factory, simulator, random_checkpoint,
                                                                 fmt) -> None:
    gw = gateway_factory(local_config(simulator.base_url, random_checkpoint))
    with pytest.raises(openai.BadRequestError) as info:
        client(gw).chat.completions.create(model="local/diffusiongemma", messages=EXTRACT, max_tokens=4,
                                           response_format=fmt)  # type: ignore[arg-type]
    assert info.value.body["param"] == "response_format"  # type: ignore[index]
    assert "response_format" in info.value.message
    assert gw.app.state.services.local.stats.decoder_passes == 0  # refused before the model ran
