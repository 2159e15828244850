"""A client that goes away stops costing engine time: its request is cancelled, recorded as such (499), and
charged what it used — for a non-streaming request too, and for a stream still waiting in the queue."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest

from tests.conftest import MASTER_KEY
from tests.gateway.test_chat_hosted import client, flushed_db
from tests.gateway.test_local_route import local_config


def _leave_after(gw, body: dict, seconds: float, passes: int = 0) -> None:  # type: ignore[no-untyped-def, type-arg]
    """POSTs the body on a raw connection and closes it after `seconds`, without reading the answer; with
    `passes`, not before the engine has run that many more decoder passes (at most 20 s): on a busy machine the
    first pass can take longer than any fixed wait, and a client gone before it has, rightly, used nothing."""
    data = json.dumps(body).encode()
    host, port = gw.url.removeprefix("http://").split(":")
    local = gw.app.state.services.local  # None on a gateway without a local model (passes must be 0 then)
    before = local.stats.decoder_passes if passes else 0
    with socket.create_connection((host, int(port))) as connection:
        connection.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                           + f"authorization: Bearer {MASTER_KEY}\r\ncontent-length: {len(data)}\r\n\r\n".encode()
                           + data)
        time.sleep(seconds)
        deadline = time.monotonic() + 20
        while passes and local.stats.decoder_passes < before + passes and time.monotonic() < deadline:
            time.sleep(0.01)


def _rows(gw, expected: int, timeout_s: float = 20):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = list(flushed_db(gw).iter_records())
        if len(rows) >= expected:
            return rows
        time.sleep(0.1)
    raise AssertionError(f"expected {expected} ledger rows")


def test_a_client_that_leaves_is_cancelled_and_charged_what_it_used(gateway_factory, simulator,
                                                                    random_checkpoint) -> None:
    # Random weights never say EOS: 512 tokens is 32 canvases, far longer than the 0.5 s the client waits.
    config = local_config(simulator.base_url, random_checkpoint).replace("max_tokens: 24", "max_tokens: 512")
    gw = gateway_factory(config.replace("  enabled: true\n", "  enabled: true\n  max_batch_size: 1\n", 1))
    long = {"model": "local/diffusiongemma", "messages": [{"role": "user", "content": "tell me everything"}],
            "max_tokens": 512, "seed": 1}
    _leave_after(gw, long, 0.5, passes=8)  # mid-generation (two canvases or more done), not streaming
    (left,) = _rows(gw, 1)
    assert (left.status, left.status_code) == ("cancelled", 499), (left.status, left.status_code, left.error)
    assert left.device_seconds > 0 and left.local_cost_usd and left.local_cost_usd > 0  # never a silent $0
    assert 0 < left.completion_tokens < 512 and left.detail["unfinished_choices"] == 1

    # A stream still queued behind a running request: cancelled in the queue, never computed.
    running = threading.Thread(target=lambda: httpx.post(gw.url + "/v1/chat/completions", json=long, timeout=60,
                                                         headers={"authorization": f"Bearer {MASTER_KEY}"}))
    running.start()
    time.sleep(0.3)
    _leave_after(gw, {**long, "stream": True, "seed": 2}, 0.3)
    queued = next(r for r in _rows(gw, 2) if r.request_id != left.request_id)
    assert (queued.status, queued.status_code, queued.device_seconds) == ("cancelled", 499, 0.0)
    running.join(60)
    done = [r for r in _rows(gw, 3) if r.status == "ok"]
    assert len(done) == 1 and done[0].completion_tokens == 512  # the other client was served in full
    assert httpx.get(gw.url + "/healthz").status_code == 200


def test_a_client_that_leaves_before_any_text_is_charged_the_passes_it_used(gateway_factory, simulator,
                                                                            random_checkpoint) -> None:
    """A stop string of 256 characters holds back the last 255 of the answer (it might span canvases), so no
    canvas has sent any text when this client leaves: it was charged $0 for the passes its row was part of. A
    stream is then still waiting for its first byte (no headers sent): it was charged $0 too."""
    config = local_config(simulator.base_url, random_checkpoint).replace("max_tokens: 24", "max_tokens: 512")
    gw = gateway_factory(config.replace("  enabled: true\n", "  enabled: true\n  max_batch_size: 1\n", 1))
    body = {"model": "local/diffusiongemma", "messages": [{"role": "user", "content": "tell me everything"}],
            "max_tokens": 512, "seed": 1, "stop": "\u00a7" * 256}
    for count, stream in enumerate((False, True), 1):  # one after the other: the passes counted are this row's
        _leave_after(gw, {**body, "stream": stream}, 0.25, passes=2)
        rows = _rows(gw, count)
    assert sorted(left.stream for left in rows) == [False, True]
    for left in rows:
        assert (left.status, left.status_code) == ("cancelled", 499), (left.status, left.status_code, left.error)
        assert left.device_seconds > 0 and left.local_cost_usd and left.local_cost_usd > 0, left
        assert left.detail["unfinished_choices"] == 1


def test_requests_left_in_the_queue_do_not_hold_its_places(gateway_factory, simulator, random_checkpoint) -> None:
    """Clients that leave while their request waits in the queue (an SDK's timeout, then its retry) left their
    rows there, cancelled but counted, until the busy batch had room to take them off: the queue answered 429
    `local_queue_full` to live clients while nobody was waiting (vLLM drops an aborted request from its
    waiting queue at once)."""
    config = local_config(simulator.base_url, random_checkpoint).replace("max_tokens: 24", "max_tokens: 512")
    gw = gateway_factory(config.replace("  enabled: true\n", "  enabled: true\n  max_batch_size: 1\n  max_queue: 1\n", 1))
    user = [{"role": "user", "content": "tell me everything"}]
    with client(gw).chat.completions.create(model="local/diffusiongemma", messages=user, stream=True,
                                            max_tokens=512, seed=1) as running:  # random weights: no EOS
        next(iter(running))  # its row holds the batch's one place for many canvases
        for count, stream in enumerate((False, True), 1):  # each waits in the queue, then its client gives up
            _leave_after(gw, {"model": "local/diffusiongemma", "messages": user, "max_tokens": 8, "stream": stream},
                         0.3)
            rows = _rows(gw, count)  # the second was a 429: the first's row still held the queue's one place
            assert [(r.status, r.device_seconds) for r in rows] == [("cancelled", 0.0)] * count, rows
        waiting: list[object] = []
        later = threading.Thread(target=lambda: waiting.append(client(gw).chat.completions.create(
            model="local/diffusiongemma", messages=user, max_tokens=8)))
        later.start()  # the queue is empty: this one waits for the batch, it is not refused
        time.sleep(0.5)
    later.join(30)
    assert len(waiting) == 1 and waiting[0].choices[0].finish_reason == "length", waiting  # type: ignore[attr-defined]


def test_a_cascade_left_during_its_escalation_still_records_the_draft(gateway_factory, simulator,
                                                                      random_checkpoint) -> None:
    """The client leaves while the hosted model is answering: the thrown-away draft's device time was spent."""
    from gateway.simulator import Fault

    rules = ("policies:\n  default: requested\n  rules:\n    - name: never-good-enough\n"
             "      action:\n        cascade:\n          escalate_to: gpt-4o-mini\n"
             "          verifiers: [{regex: {pattern: '^IMPOSSIBLE$', mode: fullmatch}}]\n")
    gw = gateway_factory(local_config(simulator.base_url, random_checkpoint, rules))
    simulator.state.faults.append(Fault(delay_s=5))  # the escalation target takes its time
    _leave_after(gw, {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}, 1.5)
    (row,) = _rows(gw, 1)
    assert (row.status, row.status_code, row.route) == ("cancelled", 499, "escalated"), (row.status, row.error)
    assert row.device_seconds > 0 and row.wasted_draft_usd > 0 and row.detail["verdicts"][0]["passed"] is False
    # and the escalation's prompt, which the upstream had in hand, is billed too (estimated)
    assert row.prompt_tokens > 0 and row.hosted_cost_usd and row.hosted_cost_usd > 0
    assert row.detail["usage_estimated"] is True and row.detail["attempts"][-1]["cancelled"] is True


def test_a_hosted_request_left_while_the_upstream_answers_is_charged_its_prompt(gateway_factory, simulator) -> None:
    """The upstream has the request (and bills its prompt) when the client leaves: the row is cancelled/499
    with the prompt's tokens and dollars, estimated as for a stream without usage — never a silent $0. The
    same for a stream still waiting for the upstream's first byte, and for a client gone during a backoff
    (nothing in flight, nothing billed)."""
    from gateway.simulator import Fault
    from router.usage import TokenEstimator
    from tests.conftest import hosted_config

    gw = gateway_factory(hosted_config(simulator.base_url))
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Summarise the history of the printing press in detail."}]
    expected = TokenEstimator().prompt_tokens("openai/gpt-4o-mini", messages)
    simulator.state.faults.append(Fault(delay_s=3))  # the upstream takes its time: the client gives up first
    _leave_after(gw, {"model": "gpt-4o-mini", "messages": messages}, 0.8)
    simulator.state.faults.append(Fault(delay_s=3))
    _leave_after(gw, {"model": "gpt-4o-mini", "messages": messages, "stream": True}, 0.8)
    rows = _rows(gw, 2)
    for row in rows:
        assert (row.status, row.status_code, row.route) == ("cancelled", 499, "hosted"), (row.status, row.error)
        assert (row.prompt_tokens, row.completion_tokens) == (expected, 0), row.stream
        assert row.hosted_cost_usd == gw.services.pricing.hosted_cost(gw.services.hosted.get("gpt-4o-mini"),
                                                                      expected, 0) > 0
        assert row.detail["usage_estimated"] is True and row.provider_model == "openai/gpt-4o-mini"
        assert row.detail["attempts"][-1]["status_code"] is None and row.detail["attempts"][-1]["cancelled"]
    assert sorted(r.stream for r in rows) == [False, True]

    # A 500 first, then the client leaves during the backoff before the retry: nothing was in flight.
    simulator.state.faults.append(Fault(status=500, retry_after_s=3))
    _leave_after(gw, {"model": "gpt-4o-mini", "messages": messages}, 0.8)
    (backoff,) = [r for r in _rows(gw, 3) if r.request_id not in {r.request_id for r in rows}]
    assert (backoff.status, backoff.prompt_tokens, backoff.hosted_cost_usd or 0.0) == ("cancelled", 0, 0.0)
    assert [a["status_code"] for a in backoff.detail["attempts"]] == [500]


def test_a_served_unverified_draft_keeps_the_bill_of_its_failed_escalation(gateway_factory, simulator,
                                                                           random_checkpoint) -> None:
    """The escalation target answers 200s whose bodies are broken (billed by the provider), then gives up: the
    draft is served unverified (`on_hosted_unavailable: serve_draft`) and the row still carries those calls'
    prompts and dollars, as a plain hosted request's does."""
    from gateway.simulator import Fault

    rules = ("policies:\n  default: requested\n  rules:\n    - name: never-good-enough\n"
             "      action:\n        cascade:\n          escalate_to: backup\n          on_hosted_unavailable: serve_draft\n"
             "          verifiers: [{regex: {pattern: '^IMPOSSIBLE$', mode: fullmatch}}]\n")
    gw = gateway_factory(local_config(simulator.base_url, random_checkpoint, rules))
    simulator.state.faults.append(Fault(broken_body=True))  # backup: no retries, no fallbacks
    raw = httpx.post(gw.url + "/v1/chat/completions", timeout=30, headers={"authorization": f"Bearer {MASTER_KEY}"},
                     json={"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8})
    assert raw.status_code == 200 and raw.headers["x-draftgate-unverified-draft"] == "true"
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and row.local_cost_usd and row.local_cost_usd > 0
    assert row.hosted_cost_usd and row.hosted_cost_usd > 0 and row.detail["usage_estimated"] is True


def test_a_cascade_left_while_its_judge_answers_is_charged_the_judges_prompt(gateway_factory, simulator,
                                                                            random_checkpoint) -> None:
    """The client leaves while the LLM judge is grading the draft: the judge's provider had its prompt (and bills
    it), as a hosted request's upstream does when its client leaves. The row had the draft's cost alone."""
    from gateway.simulator import Fault

    rules = ("policies:\n  default: requested\n  rules:\n    - name: judged\n      action:\n        cascade:\n"
             "          escalate_to: gpt-4o-mini\n          verifiers: [{judge: {model: backup, threshold: 0.5}}]\n")
    gw = gateway_factory(local_config(simulator.base_url, random_checkpoint, rules))
    simulator.state.faults.append(Fault(delay_s=5))  # the judge takes its time
    for stream in (False, True):
        _leave_after(gw, {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
                          "stream": stream}, 1.5)
        if not stream:
            simulator.state.faults.append(Fault(delay_s=5))
    rows = _rows(gw, 2)
    assert sorted(r.stream for r in rows) == [False, True]
    for row in rows:
        assert (row.status, row.status_code) == ("cancelled", 499), (row.status, row.error)
        assert row.device_seconds > 0 and row.local_cost_usd and row.local_cost_usd > 0
        assert row.detail["judge"]["prompt_tokens"] > 0 and row.hosted_cost_usd == pytest.approx(
            row.detail["judge"]["cost_usd"]) and row.hosted_cost_usd > 0
        assert row.detail["verdicts"][0]["judged"] is False
