"""Draft → verify → escalate on scripted local drafts, with the simulated provider as the hosted side."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator

import orjson
import pytest

from gateway.simulator import Fault, SimulatorServer
from ledger import PriceBook
from local_engine import Completion, Confidence, GenerationRequest, StreamDelta
from router import (
    Cascade,
    CascadeSpec,
    EscalationMode,
    Executor,
    HostedClient,
    HostedModel,
    Job,
    Plan,
    Pricing,
    Route,
)
from router.cascade import OnHostedUnavailable
from router.errors import UpstreamError
from router.verifiers import build_verifier

SIGNALS = Confidence(steps_per_canvas=(5,), step_cap_hit=False, tokens_per_pass=3.0, mean_entropy=0.01,
                     max_entropy=0.2)


class ScriptedBackend:
    """A LocalBackend whose drafts are scripted: unit tests of the router need no model."""

    model_name = "scripted-local"
    context_length: int | None = None

    def __init__(self, *texts: str) -> None:
        self.texts = deque(texts)
        self.requests: list[GenerationRequest] = []

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def is_ready(self) -> bool:
        return True

    def count_prompt_tokens(self, messages: object) -> int:
        return 5

    async def generate(self, request: GenerationRequest) -> Completion:
        self.requests.append(request)
        return Completion(text=self.texts.popleft(), finish_reason="stop", prompt_tokens=5, completion_tokens=3,
                          device_seconds=0.5, cost_usd=0.001, confidence=SIGNALS, model=self.model_name)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta | Completion]:
        completion = await self.generate(request)
        yield StreamDelta(completion.text)
        yield completion


def job(content: str = "give me json", *, stream: bool = False) -> Job:
    messages = [{"role": "user", "content": content}]
    body = {"model": "auto", "messages": messages, "stream": stream}
    upstream = {"messages": messages, "stream": stream}
    if stream:
        upstream["stream_options"] = {"include_usage": True}
    return Job(request_id="req1", alias="auto", body=body, messages=messages, stream=stream, upstream_body=upstream)


@pytest.fixture
async def sim() -> AsyncIterator[SimulatorServer]:
    async with SimulatorServer() as server:
        yield server


async def make(sim: SimulatorServer, backend: ScriptedBackend) -> tuple[Cascade, HostedClient]:
    hosted = HostedClient({"big": HostedModel("big", "openai/gpt-4o", api_base=sim.base_url, max_retries=0)},
                          backoff_initial_s=0.01)
    executor = Executor(hosted, backend, Pricing(PriceBook(), hosted, "big"), local_alias="local/x",
                        local_max_tokens=64)
    return Cascade(executor), hosted


def spec(mode: EscalationMode = EscalationMode.REGENERATE, **kw: object) -> CascadeSpec:
    return CascadeSpec(escalate_to="big", verifiers=(build_verifier("json", {}),), mode=mode, **kw)  # type: ignore[arg-type]


PLAN = Plan(route=Route.LOCAL, alias="local/x")


async def test_a_draft_that_passes_is_served_locally(sim: SimulatorServer) -> None:
    cascade, http = await make(sim, ScriptedBackend('{"ok": true}'))
    outcome = await cascade.run(job(), PLAN, spec())
    await http.aclose()
    assert outcome.route is Route.LOCAL and outcome.body is not None
    assert outcome.body["choices"][0]["message"]["content"] == '{"ok": true}'
    assert outcome.local_cost_usd == 0.001 and outcome.wasted_draft_usd == 0
    assert outcome.detail["verdicts"][0]["passed"] is True
    assert sim.state.received == []


async def test_a_broken_draft_is_regenerated_by_the_hosted_model(sim: SimulatorServer) -> None:
    cascade, http = await make(sim, ScriptedBackend('{"ok": tru'))
    outcome = await cascade.run(job("need json"), PLAN, spec())
    await http.aclose()
    assert outcome.route is Route.ESCALATED
    assert outcome.body["choices"][0]["message"]["content"] == "echo: need json"  # type: ignore[index]
    assert outcome.wasted_draft_usd == 0.001 and outcome.hosted_cost_usd and outcome.hosted_cost_usd > 0
    assert "invalid JSON" in (outcome.escalation_reason or "")
    assert outcome.body["draftgate"]["escalation"]["mode"] == "regenerate"  # type: ignore[index]
    assert sim.state.received[0].body["messages"] == [{"role": "user", "content": "need json"}]


async def test_the_stored_outcome_and_the_judge_read_content_parts_as_text(sim: SimulatorServer) -> None:
    """`router train --from-ledger` learned from the repr of content parts ("[{'type': 'text', ...}]"), and the
    judge was shown it, for every request an SDK sends with parts."""
    shown: list[str] = []

    async def judge(alias: str, messages: list[dict[str, str]]) -> str:
        shown.append(messages[0]["content"])
        return "SCORE: 10"

    parts = job()
    parts.messages[0]["content"] = [{"type": "text", "text": "Sort: 5, 2, 9"}]
    cascade, http = await make(sim, ScriptedBackend("2, 5, 9"))
    checks = (build_verifier("judge", {"model": "big"}, judge=judge),)
    outcome = await cascade.run(parts, PLAN, CascadeSpec(escalate_to="big", verifiers=checks))
    await http.aclose()
    assert outcome.detail["outcome"]["prompt"] == "Sort: 5, 2, 9"
    assert "user: Sort: 5, 2, 9\n" in shown[0] and "'type'" not in shown[0]


async def test_a_paid_judge_is_not_asked_about_a_draft_an_earlier_check_failed(sim: SimulatorServer) -> None:
    """Every verifier ran, so a draft already escalated for broken JSON still paid for a hosted judge's call."""
    asked: list[str] = []

    async def judge(alias: str, messages: list[dict[str, object]]) -> str:
        asked.append(alias)
        return "SCORE: 10"

    checks = (build_verifier("json", {}), build_verifier("judge", {"model": "big"}, judge=judge))
    cascade, http = await make(sim, ScriptedBackend('{"ok": tru', '{"ok": true}'))
    failed = await cascade.run(job("need json"), PLAN, CascadeSpec(escalate_to="big", verifiers=checks))
    assert failed.route is Route.ESCALATED and asked == []
    assert [v["verifier"] for v in failed.detail["verdicts"]] == ["json"]
    passed = await cascade.run(job("need json"), PLAN, CascadeSpec(escalate_to="big", verifiers=checks))
    await http.aclose()
    assert passed.route is Route.LOCAL and asked == ["big"] and len(passed.detail["verdicts"]) == 2


async def test_refine_hands_the_draft_and_findings_to_the_hosted_model(sim: SimulatorServer) -> None:
    cascade, http = await make(sim, ScriptedBackend('{"ok": tru'))
    outcome = await cascade.run(job("need json"), PLAN, spec(EscalationMode.REFINE))
    await http.aclose()
    sent = sim.state.received[0].body["messages"]
    assert sent[0] == {"role": "user", "content": "need json"}
    assert '{"ok": tru' in sent[-1]["content"] and "invalid JSON" in sent[-1]["content"]
    assert outcome.route is Route.ESCALATED and outcome.detail["escalation"]["mode"] == "refine"


async def test_hosted_unavailable_serves_the_flagged_draft_or_errors(sim: SimulatorServer) -> None:
    cascade, http = await make(sim, ScriptedBackend("not json", "not json"))
    sim.state.faults.append(Fault(status=503))
    outcome = await cascade.run(job(), PLAN, spec(on_hosted_unavailable=OnHostedUnavailable.SERVE_DRAFT))
    assert outcome.route is Route.LOCAL and "unverified_draft" in outcome.detail
    assert outcome.body["draftgate"]["unverified_draft"]["reason"].startswith("json:")  # type: ignore[index]
    # its row has the verdicts and the outcome any draft's row has (router train --from-ledger reads them)
    assert outcome.detail["verdicts"][0]["passed"] is False and outcome.detail["outcome"]["passed"] is False
    sim.state.faults.append(Fault(status=503))
    with pytest.raises(UpstreamError):
        await cascade.run(job(), PLAN, spec())
    await http.aclose()


async def test_streaming_never_sends_part_of_a_replaced_draft(sim: SimulatorServer) -> None:
    draft = "DRAFT-SECRET not json"
    cascade, http = await make(sim, ScriptedBackend(draft))
    chunks = await cascade.stream(job("stream it", stream=True), PLAN, spec())
    assert chunks.outcome.route is Route.ESCALATED  # decided before the first byte
    payloads = [orjson.loads(c) async for c in chunks]
    await http.aclose()
    text = "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads if p.get("choices"))
    assert text == "echo: stream it"
    assert all("DRAFT-SECRET" not in orjson.dumps(p).decode() for p in payloads)


async def test_streaming_a_verified_draft(sim: SimulatorServer) -> None:
    cascade, http = await make(sim, ScriptedBackend('{"a": 1}'))
    chunks = await cascade.stream(job("s", stream=True), PLAN, spec())
    payloads = [orjson.loads(c) async for c in chunks]
    await http.aclose()
    assert chunks.outcome.route is Route.LOCAL
    assert "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads) == '{"a": 1}'
    assert payloads[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(("response_format", "asks"), [
    (None, False), ({"type": "text"}, False), ({"type": "json_object"}, True),
    ({"type": "json_schema", "json_schema": {"name": "x"}}, True)])
def test_a_text_response_format_asks_for_no_format(response_format: object, asks: bool) -> None:
    """Some SDKs always send {"type": "text"}: `has_response_format` rules must not take it for JSON."""
    from router.job import Job
    from router.planner import facts_for

    messages = [{"role": "user", "content": "hi"}]
    body = {"model": "auto", "messages": messages, **({"response_format": response_format} if response_format else {})}
    assert facts_for(Job("r", "auto", body, messages), None, None).has_response_format is asks


@pytest.mark.parametrize(("extra", "has"), [
    ({}, False), ({"tools": []}, False), ({"tools": [{"type": "function", "function": {"name": "f"}}]}, True),
    ({"functions": [{"name": "f", "parameters": {"type": "object"}}]}, True)])
def test_has_tools_counts_the_legacy_functions_too(extra: dict[str, object], has: bool) -> None:
    """A `has_tools: true` rule that sends tool calls to a hosted model must catch `functions` requests as well:
    the local route refuses both alike."""
    from router.job import Job
    from router.planner import facts_for

    messages = [{"role": "user", "content": "hi"}]
    body = {"model": "auto", "messages": messages, **extra}
    assert facts_for(Job("r", "auto", body, messages), None, None).has_tools is has


async def test_serve_draft_never_serves_a_draft_in_the_wrong_response_format(sim: SimulatorServer) -> None:
    """The docs: no draft in the wrong format is served. With the escalation down, `serve_draft` served one anyway
    (a json_object request got "not json"); now such a request gets the upstream's error, as with `error`. A draft
    in the right format that failed only the rule's own verifiers is still served, flagged."""
    def json_job(*, stream: bool = False) -> Job:
        plain = job(stream=stream)
        return Job(**{**plain.__dict__, "body": {**plain.body, "response_format": {"type": "json_object"}}})

    serve = CascadeSpec(escalate_to="big", verifiers=(build_verifier("regex", {"pattern": "never-there"}),),
                        on_hosted_unavailable=OnHostedUnavailable.SERVE_DRAFT)
    cascade, http = await make(sim, ScriptedBackend('{"ok": true}', "not json", "not json"))
    sim.state.faults.append(Fault(status=503))
    served = await cascade.run(json_job(), PLAN, serve)
    assert served.route is Route.LOCAL and "unverified_draft" in served.detail
    for stream in (False, True):
        sim.state.faults.append(Fault(status=503))
        with pytest.raises(UpstreamError) as info:
            if stream:
                await cascade.stream(json_job(stream=True), PLAN, serve)
            else:
                await cascade.run(json_job(), PLAN, serve)
        assert info.value.outcome.route is Route.ESCALATED  # type: ignore[attr-defined]
        assert "response_format" in info.value.outcome.escalation_reason  # type: ignore[attr-defined]
    await http.aclose()
