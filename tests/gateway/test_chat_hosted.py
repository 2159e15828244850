"""Hosted path end to end: the openai SDK -> a real gateway -> the simulated provider -> the ledger."""

from __future__ import annotations

import json
import time
from importlib.util import find_spec
from pathlib import Path

import httpx
import openai
import pytest

from ledger import Database
from tests.conftest import MASTER_KEY, hosted_config


def litellm_price(model: str) -> tuple[float, float]:
    """Per-token input/output prices straight from LiteLLM's bundled cost map."""
    root = Path(find_spec("litellm").submodule_search_locations[0])  # type: ignore[index, union-attr]
    entry = json.loads((root / "model_prices_and_context_window_backup.json").read_text())[model]
    return entry["input_cost_per_token"], entry["output_cost_per_token"]


def client(gw, key: str = MASTER_KEY) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=20)


def flushed_db(gw) -> Database:  # type: ignore[no-untyped-def]
    services = gw.services
    fut = __import__("asyncio").run_coroutine_threadsafe(services.writer.flush(), services.loop)
    fut.result(10)
    return services.db


def test_non_streaming_completion_is_relayed_priced_and_recorded(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    raw = client(gw).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello there world"}],
        metadata={"task": "greet"}, temperature=0.2, max_tokens=50, user="u-1")
    completion = raw.parse()
    assert completion.choices[0].message.content == "echo: hello there world"
    assert raw.headers["x-draftgate-route"] == "hosted"
    request_id = raw.headers["x-draftgate-request-id"]
    inp, out = litellm_price("gpt-4o-mini")
    expected = 3 * inp + 4 * out  # the simulator counts words: 3 prompt, 4 completion
    assert float(raw.headers["x-draftgate-cost-usd"]) == pytest.approx(expected, rel=1e-6)

    sent = simulator.state.received[-1]
    assert sent.body["model"] == "gpt-4o-mini"  # provider name, prefix stripped
    assert sent.headers["authorization"] == "Bearer sk-upstream-secret-abc"
    assert "metadata" not in sent.body and sent.body["temperature"] == 0.2 and sent.body["user"] == "u-1"

    row = flushed_db(gw).get_record(request_id)
    assert row is not None
    assert (row.route, row.model_alias, row.provider_model) == ("hosted", "gpt-4o-mini", "openai/gpt-4o-mini")
    assert (row.prompt_tokens, row.completion_tokens) == (3, 4)
    assert row.hosted_cost_usd == pytest.approx(expected, rel=1e-6)
    assert row.reference_cost_usd == pytest.approx(expected, rel=1e-6)
    assert row.status == "ok" and row.status_code == 200 and not row.unpriced


def test_streaming_relays_chunks_and_usage(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    with client(gw).chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "one two three four"}], stream=True,
            stream_options={"include_usage": True}) as response:
        assert response.headers["x-draftgate-route"] == "hosted"
        request_id = response.headers["x-draftgate-request-id"]
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: one two three four"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    row = flushed_db(gw).get_record(request_id)
    assert row is not None and row.stream and row.completion_tokens == 5 and row.hosted_cost_usd > 0


def test_stream_without_usage_option_gets_no_usage_chunk_but_ledger_has_tokens(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    with client(gw).chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "a b"}], stream=True) as response:
        request_id = response.headers["x-draftgate-request-id"]
        chunks = list(response.parse())
    assert all(c.choices for c in chunks)  # no usage-only chunk leaked to a client that did not ask
    assert simulator.state.received[-1].body["stream_options"] == {"include_usage": True}
    row = flushed_db(gw).get_record(request_id)
    assert row is not None and (row.prompt_tokens, row.completion_tokens) == (2, 3)


def test_unpriced_model_is_flagged_never_zero(gateway_factory, simulator) -> None:
    extra = f"""\
  - name: mystery
    model: openai/mystery-model-9000
    api_base: {simulator.base_url}
"""
    yaml_text = hosted_config(simulator.base_url).replace("local:\n", extra + "local:\n", 1)
    gw = gateway_factory(yaml_text)
    raw = client(gw).chat.completions.with_raw_response.create(
        model="mystery", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-draftgate-cost-usd"] == "unpriced"
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and row.unpriced and row.hosted_cost_usd is None and row.cost_usd is None


def test_price_override_from_yaml_wins(gateway_factory, simulator) -> None:
    yaml_text = hosted_config(simulator.base_url).replace(
        "    max_retries: 2\n", "    max_retries: 2\n    price: {input_per_mtok: 1.0, output_per_mtok: 2.0}\n", 1)
    gw = gateway_factory(yaml_text)
    raw = client(gw).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x y"}])
    assert float(raw.headers["x-draftgate-cost-usd"]) == pytest.approx((2 * 1.0 + 3 * 2.0) / 1e6)


def test_models_health_ready_metrics(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    ids = [m.id for m in client(gw).models.list()]
    assert ids == ["auto", "gpt-4o-mini", "backup"]
    assert client(gw).models.retrieve("backup").id == "backup"
    with pytest.raises(openai.NotFoundError) as missing:
        client(gw).models.retrieve("gpt-5-turbo")
    assert missing.value.body["code"] == "model_not_found"  # type: ignore[index]
    assert httpx.get(gw.url + "/v1/models/backup").status_code == 401  # a key is needed, as for the list
    assert httpx.get(gw.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(gw.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": True}
    client(gw).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "m"}])
    text = httpx.get(gw.url + "/metrics").text
    assert 'draftgate_requests_total{model="gpt-4o-mini",route="hosted",status="ok"} 1.0' in text
    assert "draftgate_request_latency_seconds_bucket" in text
    assert 'draftgate_cost_usd_total{kind="hosted",model="gpt-4o-mini",route="hosted"}' in text
    assert "sk-upstream-secret-abc" not in text

    # Model names no alias has are one bounded label, not a series per name a client makes up.
    for made_up in ("gpt-5-turbo", "gpt-5-turbo-x", "x" * 200):
        with pytest.raises(openai.NotFoundError):
            client(gw).chat.completions.create(model=made_up, messages=[{"role": "user", "content": "m"}])
    text = httpx.get(gw.url + "/metrics").text
    assert "gpt-5-turbo" not in text and "x" * 200 not in text
    assert 'draftgate_requests_total{model="other",route="none",status="error"} 3.0' in text


def test_metrics_dollars_are_the_reports_dollars_when_a_request_is_partly_unpriced(gateway_factory, simulator) -> None:
    """A request whose price is partly unknown (a priced attempt billed for a broken body, then a fallback with no
    price) is `unpriced`: the report leaves all its dollars out, but /metrics added the known part to
    draftgate_cost_usd_total, so Prometheus and the report disagreed on what was spent."""
    from prometheus_client.parser import text_string_to_metric_families

    from gateway.simulator import Fault

    yaml_text = hosted_config(simulator.base_url).replace("model: openai/gpt-4o\n", "model: openai/no-price-zz\n")
    gw = gateway_factory(yaml_text.replace("max_retries: 2", "max_retries: 0"))
    simulator.state.faults.append(Fault(broken_body=True))  # billed its prompt, then the unpriced fallback answers
    partly = client(gw).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello there"}])
    assert partly.headers["x-draftgate-cost-usd"] == "unpriced"
    client(gw).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "priced"}])
    flushed_db(gw)
    report = httpx.get(f"{gw.url}/v1/reports/costs", headers={"authorization": f"Bearer {MASTER_KEY}"}).json()
    assert report["total"]["unpriced_requests"] == 1 and report["total"]["cost_usd"] > 0
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(gw.url + "/metrics").text)}
    dollars = sum(s.value for s in families["draftgate_cost_usd"].samples if s.name.endswith("_total"))
    assert dollars == pytest.approx(report["total"]["cost_usd"])
    assert sum(s.value for s in families["draftgate_unpriced_requests"].samples if s.name.endswith("_total")) == 1


def test_restart_keeps_the_ledger(gateway_factory, simulator, tmp_path) -> None:
    data = tmp_path / "persist"
    gw = gateway_factory(hosted_config(simulator.base_url), data_dir=data)
    ids = [client(gw).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"n{i}"}]).headers["x-draftgate-request-id"]
        for i in range(3)]
    gw.stop()
    gw2 = gateway_factory(hosted_config(simulator.base_url), data_dir=data)
    db = flushed_db(gw2)
    assert all(db.get_record(i) is not None for i in ids)


def test_providers_that_need_translation_go_through_litellm(gateway_factory, simulator) -> None:
    extra = f"""\
  - name: via-litellm
    model: hosted_vllm/sim-model
    api_base: {simulator.base_url}
    price: {{input_per_mtok: 1.0, output_per_mtok: 1.0}}
"""
    gw = gateway_factory(hosted_config(simulator.base_url).replace("local:\n", extra + "local:\n", 1))
    raw = client(gw).chat.completions.with_raw_response.create(
        model="via-litellm", messages=[{"role": "user", "content": "through litellm"}])
    assert raw.parse().choices[0].message.content == "echo: through litellm"
    assert simulator.state.received[-1].body["model"] == "sim-model"
    assert float(raw.headers["x-draftgate-cost-usd"]) == pytest.approx((2 + 3) / 1e6)
    stream = client(gw).chat.completions.create(model="via-litellm", stream=True,
                                                messages=[{"role": "user", "content": "streamed too"}])
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "echo: streamed too"


def test_upstream_connections_are_reused_after_complete_answers_streamed_or_not(gateway_factory, simulator) -> None:
    """A stream read to its end goes back to the pool; only a stream left early closes its connection."""
    simulator.state.done_gap_s = 0.05  # the body's end arrives after `[DONE]`: it must be read, not cut off
    gw = gateway_factory(hosted_config(simulator.base_url))
    sdk = client(gw)
    for i in range(6):
        stream = sdk.chat.completions.create(model="gpt-4o-mini", stream=True,
                                             messages=[{"role": "user", "content": f"tell me {i} things"}])
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == f"echo: tell me {i} things"
        time.sleep(0.2)  # the body's end is read after the client has its answer
        done = sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert done.choices[0].message.content == "echo: hi"
    assert simulator.connections == 1
