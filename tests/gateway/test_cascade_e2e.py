"""A cascade rule file end to end: the openai SDK, the bundled tiny model drafting, the simulated provider
as the escalation target, and the ledger recording verdicts and wasted drafts."""

from __future__ import annotations

import json

import openai
import pytest

from gateway.outcomes import ledger_outcomes
from gateway.simulator import Fault
from local_engine.loading import BUNDLED
from router.usage import TokenEstimator
from tests.conftest import hosted_config
from tests.gateway.test_chat_hosted import client, flushed_db

pytestmark = pytest.mark.skipif(not (BUNDLED / "model.safetensors").exists(), reason="bundled checkpoint missing")

RULES = """\
policies:
  default: requested
  rules:
    - name: arithmetic
      when: {metadata: {task: math}}
      action:
        cascade:
          escalate_to: gpt-4o-mini
          verifiers: [{regex: {pattern: '^-?\\d+$', mode: fullmatch}}]
    - name: invoice-regenerate
      when: {metadata: {task: invoice}}
      action:
        cascade:
          escalate_to: gpt-4o-mini
          mode: regenerate
          verifiers: [{json_schema: {schema: {type: object, required: [total]}}}]
    - name: invoice-refine
      when: {metadata: {task: invoice-refine}}
      action:
        cascade:
          escalate_to: gpt-4o-mini
          mode: refine
          verifiers: [{json_schema: {schema: {type: object, required: [total]}}}]
"""
EXTRACT = 'Extract city as JSON: {"name": "Ada", "age": 36, "city": "Oslo"}'


@pytest.fixture
def gw(gateway_factory, simulator):  # type: ignore[no-untyped-def]
    return gateway_factory(hosted_config(simulator.base_url, RULES, local=True))


def test_a_routine_request_is_answered_locally(gw, simulator) -> None:  # type: ignore[no-untyped-def]
    raw = client(gw).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "What is 37 + 58?"}], metadata={"task": "math"}, seed=1)
    assert raw.headers["x-draftgate-route"] == "local", raw.headers.get("x-draftgate-escalation")
    assert raw.parse().choices[0].message.content.strip().lstrip("-").isdigit()
    assert simulator.state.received == []
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and row.rule == "arithmetic" and row.detail["verdicts"][0]["passed"]
    assert row.local_cost_usd and row.local_cost_usd > 0 and row.wasted_draft_usd == 0


@pytest.mark.parametrize("mode", ["regenerate", "refine"])
def test_a_broken_draft_is_caught_and_escalated(gw, simulator, mode) -> None:  # type: ignore[no-untyped-def]
    task = "invoice" if mode == "regenerate" else "invoice-refine"
    simulator.state.replies.append('{"total": 42}')
    raw = client(gw).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": EXTRACT}], metadata={"task": task}, seed=1)
    body = raw.parse()
    assert raw.headers["x-draftgate-route"] == "escalated"
    assert "'total' is a required property" in raw.headers["x-draftgate-escalation"]
    assert body.choices[0].message.content == '{"total": 42}'
    assert body.model_extra["draftgate"]["escalation"]["mode"] == mode
    sent = simulator.state.received[-1].body["messages"]
    if mode == "refine":
        assert len(sent) == 2 and "'total' is a required property" in sent[-1]["content"]
    else:
        assert sent == [{"role": "user", "content": EXTRACT}]
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and row.route == "escalated" and row.wasted_draft_usd > 0
    assert row.hosted_cost_usd and row.hosted_cost_usd > 0 and row.device_seconds > 0
    assert row.cost_usd == pytest.approx(row.hosted_cost_usd + row.wasted_draft_usd)
    assert "total" in (row.escalation_reason or "")


def test_the_cascades_target_gets_no_local_only_sampling_options(gw, simulator) -> None:  # type: ignore[no-untyped-def]
    """The in-process engine cannot apply vLLM's top_k, so the cascade sends the request straight to its target,
    which (OpenAI among them) would refuse top_k: the target gets it without, streaming or not, and the row
    says what was left out. Penalties are OpenAI's own and stay."""
    ask = {"model": "auto", "messages": [{"role": "user", "content": "What is 2 + 2?"}], "metadata": {"task": "math"},
           "frequency_penalty": 0.5, "extra_body": {"top_k": 5, "min_p": 0.1}}
    raws = [client(gw).chat.completions.with_raw_response.create(**ask)]
    with client(gw).chat.completions.with_streaming_response.create(**ask, stream=True) as response:
        assert "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
        raws.append(response)
    for raw, received in zip(raws, simulator.state.received, strict=True):
        assert raw.headers["x-draftgate-route"] == "hosted" and received.body["model"] == "gpt-4o-mini"
        assert received.body["frequency_penalty"] == 0.5 and not {"top_k", "min_p"} & set(received.body)
        row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
        assert row is not None and row.status == "ok" and row.detail["dropped_params"] == ["top_k", "min_p"]
    # A hosted route the client named itself relays them as sent.
    client(gw).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}],
                                       extra_body={"top_k": 5})
    assert simulator.state.received[-1].body["top_k"] == 5


def test_streaming_escalation_sends_no_draft_bytes(gw, simulator) -> None:  # type: ignore[no-untyped-def]
    simulator.state.replies.append('{"total": 7}')
    stream = client(gw).chat.completions.create(
        model="auto", messages=[{"role": "user", "content": EXTRACT}], metadata={"task": "invoice"}, stream=True,
        seed=1)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert json.loads(text) == {"total": 7}
    assert "Oslo" not in text


def test_cascade_with_the_hosted_side_down_errors_cleanly(gw, simulator) -> None:  # type: ignore[no-untyped-def]
    from gateway.simulator import Fault

    for stream in (False, True):
        simulator.state.faults.extend([Fault(status=503)] * 3)  # gpt-4o-mini: 1 try + 2 retries
        simulator.state.faults.extend([Fault(status=503)])  # its fallback
        with pytest.raises(openai.APIStatusError) as info:
            client(gw).chat.completions.create(model="auto", messages=[{"role": "user", "content": EXTRACT}],
                                               metadata={"task": "invoice"}, seed=1, stream=stream)
        assert info.value.status_code == 502
        # The thrown-away draft was still computed: the failed request's row (and its reply) carry its cost.
        headers = info.value.response.headers
        assert headers["x-draftgate-route"] == "escalated"
        row = flushed_db(gw).get_record(headers["x-draftgate-request-id"])
        assert row is not None and (row.route, row.status, row.status_code) == ("escalated", "error", 502)
        assert row.device_seconds > 0 and row.wasted_draft_usd > 0 and "total" in (row.escalation_reason or "")
        assert float(headers["x-draftgate-cost-usd"]) == pytest.approx(row.wasted_draft_usd, abs=1e-8)
        assert row.detail["verdicts"] and row.detail["draft_tokens"]["prompt"] > 0


def test_an_llm_judge_call_is_billed_on_the_request_it_judged(gateway_factory, simulator) -> None:
    """The judge verifier's hosted call is work the provider bills: its tokens and dollars are on the row (hosted
    dollars on a draft served locally; added to the escalation's on one escalated), never a silent $0."""
    rules = ("policies:\n  default: requested\n  rules:\n    - name: judged\n      action:\n        cascade:\n"
             "          escalate_to: gpt-4o-mini\n          verifiers: [{judge: {model: backup, threshold: 0.5}}]\n")
    gw = gateway_factory(hosted_config(simulator.base_url, rules, local=True))
    services = gw.services
    simulator.state.replies.append("SCORE: 9")  # the judge (backup, openai/gpt-4o) approves the draft
    raw = client(gw).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": EXTRACT}], seed=1)
    assert raw.headers["x-draftgate-route"] == "local" and len(simulator.state.received) == 1
    judge_usage = simulator.state.usage(simulator.state.received[0].body, "SCORE: 9")
    judge_usd = services.pricing.hosted_cost(services.hosted.get("backup"), judge_usage["prompt_tokens"],
                                             judge_usage["completion_tokens"])
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and row.route == "local" and judge_usd
    assert row.hosted_cost_usd == pytest.approx(judge_usd)
    assert row.detail["verdicts"][0]["details"]["cost_usd"] == pytest.approx(judge_usd)
    assert float(raw.headers["x-draftgate-cost-usd"]) == pytest.approx(judge_usd + (row.local_cost_usd or 0), abs=1e-8)

    simulator.state.replies.extend(["SCORE: 1", "hosted answer"])  # rejected: escalated to gpt-4o-mini
    raw = client(gw).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": EXTRACT}], seed=1)
    assert raw.headers["x-draftgate-route"] == "escalated"
    judge, escalation = simulator.state.received[1:]
    judge_usage = simulator.state.usage(judge.body, "SCORE: 1")
    escalation_usage = simulator.state.usage(escalation.body, "hosted answer")
    expected = (services.pricing.hosted_cost(services.hosted.get("backup"), judge_usage["prompt_tokens"],
                                             judge_usage["completion_tokens"])
                + services.pricing.hosted_cost(services.hosted.get("gpt-4o-mini"), escalation_usage["prompt_tokens"],
                                               escalation_usage["completion_tokens"]))
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and row.hosted_cost_usd == pytest.approx(expected)


def test_a_reasoning_model_can_judge(gateway_factory, simulator) -> None:  # type: ignore[no-untyped-def]
    """o1/o3/gpt-5 refuse `max_tokens` and `temperature: 0` (400s, as the fake upstream words them like OpenAI) and
    spend their budget reasoning: the judge sent both, so with such a model it never judged a draft."""
    rules = ("policies:\n  default: requested\n  rules:\n    - name: judged\n      action:\n        cascade:\n"
             "          escalate_to: gpt-4o-mini\n          verifiers: [{judge: {model: thinker, threshold: 0.5}}]\n")
    thinker = (f"  - name: thinker\n    model: openai/o3-mini\n    api_base: {simulator.base_url}\n"
               "    api_key: os.environ/DRAFTGATE_TEST_UPSTREAM_KEY\n    max_retries: 0\nlocal:\n")
    gw = gateway_factory(hosted_config(simulator.base_url, rules, local=True).replace("local:\n", thinker, 1))
    simulator.state.reasoning_models["o3-mini"] = 300
    simulator.state.replies.append("SCORE: 9")
    raw = client(gw).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": EXTRACT}], seed=1)
    assert raw.headers["x-draftgate-route"] == "local", raw.headers.get("x-draftgate-escalation")
    sent = simulator.state.received[0].body
    assert sent["model"] == "o3-mini" and "temperature" not in sent and "max_tokens" not in sent
    assert sent["max_completion_tokens"] > 300
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    verdict = row.detail["verdicts"][0] if row is not None else {}
    assert verdict["passed"] and verdict["details"]["score"] == 0.9
    assert verdict["details"]["completion_tokens"] == 302  # its reasoning billed with its answer


def test_a_judge_that_cannot_be_reached_escalates_without_teaching_the_classifier(gateway_factory, simulator) -> None:
    """The draft was never judged: the row says so, and `router train --from-ledger` does not learn from it that
    the prompt needed the hosted model (it did from every judge outage), as it does from a judge's low grade."""
    rules = ("policies:\n  default: requested\n  rules:\n    - name: judged\n      action:\n        cascade:\n"
             "          escalate_to: gpt-4o-mini\n          verifiers: [{judge: {model: backup, threshold: 0.5}}]\n")
    gw = gateway_factory(hosted_config(simulator.base_url, rules, local=True))
    simulator.state.faults.append(Fault(status=500))  # the judge (backup, no retries) is down
    simulator.state.replies.append("hosted answer")
    raw = client(gw).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": EXTRACT}], seed=1)
    assert raw.headers["x-draftgate-route"] == "escalated" and "judge backup unavailable" in raw.headers[
        "x-draftgate-escalation"]
    assert raw.parse().model_dump()["draftgate"]["verdicts"][0]["judged"] is False
    db = flushed_db(gw)
    row = db.get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and row.route == "escalated" and "outcome" not in row.detail
    assert ledger_outcomes(db.url) == []
    simulator.state.replies.extend(["SCORE: 1", "hosted answer"])  # judged, and found wanting: that is an outcome
    client(gw).chat.completions.create(model="auto", messages=[{"role": "user", "content": EXTRACT}], seed=1)
    flushed_db(gw)
    assert [(r.prompt, r.label) for r in ledger_outcomes(db.url)][:1] == [(EXTRACT, 1.0)]

    simulator.state.faults.append(Fault(broken_body=True))  # the judge answered 200, unusably: still billed
    simulator.state.replies.append("hosted answer")
    raw = client(gw).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": EXTRACT}], seed=1)
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    judged = simulator.state.received[-2].body
    judge_usd = gw.services.pricing.hosted_cost(gw.services.hosted.get("backup"), TokenEstimator().prompt_tokens(
        "openai/gpt-4o", judged["messages"]), 0)
    assert row is not None and row.detail["judge"]["prompt_tokens"] > 0 and judge_usd
    assert row.detail["judge"]["cost_usd"] == pytest.approx(judge_usd)
    assert row.hosted_cost_usd is not None and row.hosted_cost_usd > judge_usd


def test_a_streamed_escalation_keeps_the_judges_bill(gateway_factory, simulator) -> None:  # type: ignore[no-untyped-def]
    """The judge's hosted call was added to the escalation's dollars before the hosted stream opened; the stream's
    own price, set when it ended, replaced it: a streamed escalation's row lost the judge's bill."""
    rules = ("policies:\n  default: requested\n  rules:\n    - name: judged\n      action:\n        cascade:\n"
             "          escalate_to: gpt-4o-mini\n          verifiers: [{judge: {model: backup, threshold: 0.5}}]\n")
    gw = gateway_factory(hosted_config(simulator.base_url, rules, local=True))
    services = gw.services
    simulator.state.replies.extend(["SCORE: 1", "hosted answer"])
    with client(gw).chat.completions.with_streaming_response.create(
            model="auto", messages=[{"role": "user", "content": EXTRACT}], seed=1, stream=True,
            stream_options={"include_usage": True}) as response:
        chunks = list(response.parse())
        request_id = response.headers["x-draftgate-request-id"]
        assert response.headers["x-draftgate-route"] == "escalated"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "hosted answer"
    judge, escalation = simulator.state.received
    judge_usage = simulator.state.usage(judge.body, "SCORE: 1")
    escalation_usage = simulator.state.usage(escalation.body, "hosted answer")
    judge_usd = services.pricing.hosted_cost(services.hosted.get("backup"), judge_usage["prompt_tokens"],
                                             judge_usage["completion_tokens"])
    escalation_usd = services.pricing.hosted_cost(services.hosted.get("gpt-4o-mini"),
                                                  escalation_usage["prompt_tokens"],
                                                  escalation_usage["completion_tokens"])
    assert judge_usd and escalation_usd
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == escalation_usage["completion_tokens"]
    row = flushed_db(gw).get_record(request_id)
    assert row is not None and row.route == "escalated" and row.status == "ok"
    assert row.detail["judge"]["cost_usd"] == pytest.approx(judge_usd)
    assert row.hosted_cost_usd == pytest.approx(judge_usd + escalation_usd)
