"""POST /v1/embeddings end to end: the openai SDK -> a real gateway -> the simulated provider -> the ledger."""

from __future__ import annotations

import base64
import struct
import time

import httpx
import openai
import pytest

from gateway.simulator import Fault, embedding_vector
from tests.conftest import MASTER_KEY, hosted_config
from tests.gateway.test_chat_hosted import client, flushed_db, litellm_price

EMBEDDING_MODELS = """\
  - name: embed-small
    model: openai/text-embedding-3-small
    api_base: {url}
    api_key: os.environ/DRAFTGATE_TEST_UPSTREAM_KEY
    timeout_s: 2
    max_retries: 2
    fallbacks: [embed-large]
  - name: embed-large
    model: openai/text-embedding-3-large
    api_base: {url}
    max_retries: 0
  - name: embed-mystery
    model: openai/mystery-embedder-9000
    api_base: {url}
  - name: embed-slow
    model: openai/text-embedding-3-small
    api_base: {url}
    timeout_s: 0.5
    max_retries: 1
  - name: embed-litellm
    model: hosted_vllm/sim-embedder
    api_base: {url}
    price: {{input_per_mtok: 1.0, output_per_mtok: 0}}
    timeout_s: 5
    max_retries: 1
  - name: embed-jina
    model: jina_ai/jina-embeddings-v3
    api_base: {url}
    price: {{input_per_mtok: 1.0, output_per_mtok: 0}}
    max_retries: 0
"""
KEYS = """\
keys:
  - name: scoped
    key: sk-scoped-key-123456
    models: [gpt-4o-mini]
  - name: one-a-minute
    key: sk-rpm-key-123456
    rpm_limit: 1
  - name: broke
    key: sk-broke-key-123456
    max_budget_usd: 0.000001
    budget_period: day
"""
AUTH = {"authorization": f"Bearer {MASTER_KEY}"}


def config(url: str) -> str:
    return hosted_config(url, KEYS, local=True).replace("local:\n", EMBEDDING_MODELS.format(url=url) + "local:\n", 1)


@pytest.fixture
def gw(gateway_factory, simulator):  # type: ignore[no-untyped-def]
    return gateway_factory(config(simulator.base_url), load_local_engine=False)


def floats(encoded: str) -> list[float]:
    raw = base64.b64decode(encoded)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def test_string_and_list_inputs_are_relayed_priced_and_recorded(gw, simulator) -> None:
    raw = client(gw).embeddings.with_raw_response.create(model="embed-small", input="hello there world", user="u-1")
    answer = raw.parse()  # the SDK asks for base64 by default and decodes it
    assert answer.data[0].embedding == embedding_vector("hello there world", 8)
    assert answer.model == "text-embedding-3-small" and answer.usage.prompt_tokens == 3
    sent = simulator.state.received[-1]
    assert sent.path == "/v1/embeddings" and sent.body["model"] == "text-embedding-3-small"
    assert sent.body["encoding_format"] == "base64" and sent.body["user"] == "u-1"
    assert sent.headers["authorization"] == "Bearer sk-upstream-secret-abc"
    assert raw.headers["x-draftgate-route"] == "hosted"
    price, _ = litellm_price("text-embedding-3-small")
    assert float(raw.headers["x-draftgate-cost-usd"]) == pytest.approx(3 * price, rel=1e-6)
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and (row.route, row.model_alias, row.provider_model) == (
        "hosted", "embed-small", "openai/text-embedding-3-small")
    assert (row.prompt_tokens, row.completion_tokens, row.status_code, row.unpriced) == (3, 0, 200, False)
    assert row.hosted_cost_usd == pytest.approx(3 * price, rel=1e-6)
    assert row.reference_cost_usd == row.hosted_cost_usd  # no savings claimed
    assert (row.detail or {})["endpoint"] == "embeddings" and "usage_estimated" not in (row.detail or {})

    several = client(gw).embeddings.create(model="embed-small", input=["a b", "c"], encoding_format="float")
    assert [d.index for d in several.data] == [0, 1]
    assert [d.embedding for d in several.data] == [embedding_vector("a b", 8), embedding_vector("c", 8)]
    ids = client(gw).embeddings.create(model="embed-small", input=[[1, 2, 3], [4]])
    assert ids.data[1].embedding == embedding_vector([4], 8) and ids.usage.prompt_tokens == 4


def test_base64_stays_base64_and_dimensions_are_passed_on(gw, simulator) -> None:
    answer = client(gw).embeddings.create(model="embed-small", input="x", encoding_format="base64", dimensions=4)
    encoded = answer.data[0].embedding
    assert isinstance(encoded, str) and floats(encoded) == embedding_vector("x", 4)
    assert simulator.state.received[-1].body["dimensions"] == 4
    r = httpx.post(gw.url + "/embeddings", json={"model": "embed-small", "input": "x", "encoding_format": "base64"},
                   headers=AUTH, timeout=30)  # the path without /v1, as chat's
    assert r.status_code == 200 and isinstance(r.json()["data"][0]["embedding"], str)


def test_unpriced_model_and_missing_usage_are_flagged_never_zero(gw, simulator) -> None:
    raw = client(gw).embeddings.with_raw_response.create(model="embed-mystery", input="hi")
    assert raw.headers["x-draftgate-cost-usd"] == "unpriced"
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and row.unpriced and row.hosted_cost_usd is None and row.prompt_tokens == 1

    for fault in (Fault(no_usage=True), Fault(usage={"prompt_tokens": 0, "total_tokens": 0})):
        simulator.state.faults.append(fault)
        raw = client(gw).embeddings.with_raw_response.create(model="embed-small", input="one two three four")
        row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
        assert row is not None and row.prompt_tokens == 4 and (row.detail or {})["usage_estimated"]
        assert row.hosted_cost_usd is not None and row.hosted_cost_usd > 0 and not row.unpriced


def test_requests_that_cannot_be_served_get_openai_errors(gw, simulator) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client(gw).embeddings.create(model="no-such-model", input="hi")
    assert missing.value.code == "model_not_found"
    for alias in ("local/diffusiongemma", "auto"):  # aliases for chat: said so, with the ones that embed
        with pytest.raises(openai.BadRequestError) as chat_only:
            client(gw).embeddings.create(model=alias, input="hi")
        assert chat_only.value.code == "model_not_supported" and "embed-small" in chat_only.value.message
    for empty in ("", [], [""], [[]], ["a", 1], True):
        r = httpx.post(gw.url + "/v1/embeddings", json={"model": "embed-small", "input": empty}, headers=AUTH)
        error = r.json()["error"]
        assert r.status_code == 400 and (error["type"], error["param"]) == ("invalid_request_error", "input"), empty
    r = httpx.post(gw.url + "/v1/embeddings", json={"model": "embed-small", "input": "x", "inptu_type": "q"},
                   headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_parameter"
    r = httpx.post(gw.url + "/v1/embeddings", content=b"", headers=AUTH)
    assert r.status_code == 400 and "`input`" in r.json()["error"]["message"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gw.base_url, api_key="sk-wrong", max_retries=0).embeddings.create(
            model="embed-small", input="hi")
    with pytest.raises(openai.PermissionDeniedError) as denied:
        client(gw, "sk-scoped-key-123456").embeddings.create(model="embed-small", input="hi")
    assert denied.value.code == "model_not_allowed"
    row = flushed_db(gw).get_record(denied.value.response.headers["x-draftgate-request-id"])
    assert row is not None and row.status_code == 403 and (row.detail or {})["endpoint"] == "embeddings"
    assert simulator.state.received == []  # nothing refused reached an upstream


def test_budgets_and_rate_limits_apply(gw, simulator) -> None:
    limited = client(gw, "sk-rpm-key-123456")
    limited.embeddings.create(model="embed-small", input="hi")
    with pytest.raises(openai.RateLimitError) as second:
        limited.embeddings.create(model="embed-small", input="hi")
    assert second.value.code == "rate_limit_exceeded" and int(second.value.response.headers["retry-after"]) >= 1
    with pytest.raises(openai.RateLimitError) as broke:  # its worst case (the fallback's price) exceeds the budget
        client(gw, "sk-broke-key-123456").embeddings.create(model="embed-small", input="a long enough input " * 4)
    assert broke.value.code == "budget_exceeded"
    assert len(simulator.state.received) == 1


def test_upstream_failures_retry_fall_back_and_relay(gw, simulator) -> None:
    simulator.state.faults.extend([Fault(status=500)] * 3)  # embed-small's three attempts; embed-large answers
    raw = client(gw).embeddings.with_raw_response.create(model="embed-small", input="hi")
    assert raw.parse().data[0].embedding == embedding_vector("hi", 8)
    assert [r.body["model"] for r in simulator.state.received] == ["text-embedding-3-small"] * 3 + [
        "text-embedding-3-large"]
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and row.provider_model == "openai/text-embedding-3-large" and row.attempts == 4
    assert row.hosted_cost_usd == pytest.approx(litellm_price("text-embedding-3-large")[0], rel=1e-6)

    simulator.state.received.clear()
    simulator.state.faults.append(Fault(status=400, message="input is too long", code="too_long", param="input"))
    with pytest.raises(openai.BadRequestError) as refused:
        client(gw).embeddings.create(model="embed-small", input="hi")
    assert "input is too long" in refused.value.message and refused.value.code == "too_long"
    assert len(simulator.state.received) == 1  # a refusal is neither retried nor sent to the fallback

    simulator.state.faults.append(Fault(status=429, retry_after_s=1))
    started = time.monotonic()
    client(gw).embeddings.create(model="embed-small", input="hi")
    assert time.monotonic() - started >= 1  # the upstream's Retry-After, not the 0.25 s backoff

    simulator.state.faults.extend([Fault(delay_s=1.5)] * 2)
    with pytest.raises(openai.APIStatusError) as slow:
        client(gw).embeddings.create(model="embed-slow", input="a b")
    assert slow.value.status_code == 502 and "timed out" in slow.value.message
    row = flushed_db(gw).get_record(slow.value.response.headers["x-draftgate-request-id"])
    assert row is not None and row.status_code == 502 and row.attempts == 2
    assert row.prompt_tokens > 0 and row.hosted_cost_usd is not None and row.hosted_cost_usd > 0  # billed attempts


def test_embeddings_through_litellm(gw, simulator) -> None:
    simulator.state.faults.append(Fault(status=500))  # retried through LiteLLM as on the direct path
    raw = client(gw).embeddings.with_raw_response.create(model="embed-litellm", input=["one two", "three"],
                                                         encoding_format="float")
    answer = raw.parse()
    assert [d.embedding for d in answer.data] == [embedding_vector("one two", 8), embedding_vector("three", 8)]
    assert len(simulator.state.received) == 2 and simulator.state.received[-1].path == "/v1/embeddings"
    assert simulator.state.received[-1].body["model"] == "sim-embedder"
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and row.provider_model == "hosted_vllm/sim-embedder" and row.prompt_tokens == 3
    assert row.hosted_cost_usd == pytest.approx(3 / 1e6) and row.attempts == 2
    metrics = httpx.get(gw.url + "/metrics", headers=AUTH).text
    assert 'draftgate_requests_total{model="embed-litellm",route="hosted",status="ok"} 1.0' in metrics


def test_litellm_providers_that_refuse_encoding_format_or_user_still_embed(gw, simulator) -> None:
    # The SDK sends encoding_format (base64) on every call, and `user` names the end user the ledger records; through
    # LiteLLM, Jina (as Gemini, Fireworks, Ollama; Mistral, Cohere, Vertex, Voyage for `user`) refused them: a 400
    # telling the client to set litellm.drop_params. The gateway serves both itself there.
    raw = client(gw).embeddings.with_raw_response.create(model="embed-jina", input=["one two", "three"], user="u-7")
    assert [d.embedding for d in raw.parse().data] == [embedding_vector("one two", 8), embedding_vector("three", 8)]
    sent = simulator.state.received[-1]
    assert sent.path == "/v1/embeddings" and "encoding_format" not in sent.body and "user" not in sent.body
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and (row.status_code, row.end_user, row.prompt_tokens) == (200, "u-7", 3)
    encoded = client(gw).embeddings.create(model="embed-jina", input="x", encoding_format="base64").data[0].embedding
    assert isinstance(encoded, str) and floats(encoded) == embedding_vector("x", 8)  # as OpenAI encodes it
    plain = client(gw).embeddings.create(model="embed-jina", input="x", encoding_format="float").data[0].embedding
    assert plain == embedding_vector("x", 8)


def test_a_client_that_leaves_is_recorded_cancelled_and_billed(gw, simulator) -> None:
    simulator.state.faults.append(Fault(delay_s=1.5))  # the upstream has the request when the client gives up
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gw.url + "/v1/embeddings", json={"model": "embed-small", "input": "one two three"}, headers=AUTH,
                   timeout=0.5)
    deadline = time.monotonic() + 10
    rows: list = []  # type: ignore[type-arg]
    while not rows and time.monotonic() < deadline:  # recorded once the gateway notices the hang-up
        time.sleep(0.1)
        rows = list(flushed_db(gw).iter_records())
    (row,) = rows
    assert (row.status, row.status_code) == ("cancelled", 499)
    assert row.prompt_tokens == 3 and row.hosted_cost_usd is not None and row.hosted_cost_usd > 0
    assert (row.detail or {})["usage_estimated"] and (row.detail or {})["endpoint"] == "embeddings"
