"""`backend: vllm` against an OpenAI-compatible server on 127.0.0.1 (the simulator stands in for vLLM)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from gateway.simulator import Fault, Simulator, SimulatorServer
from local_engine import (
    Completion,
    EngineConfig,
    GenerationRequest,
    SamplingOptions,
    StreamDelta,
    backend_capabilities,
    create_backend,
)
from local_engine.errors import (
    EngineUnavailableError,
    GenerationFailedError,
    QueueFullError,
    RequestRejectedError,
)
from local_engine.vllm_backend import VllmBackend


async def test_generate_and_stream_with_metering() -> None:
    async with SimulatorServer() as server_a, SimulatorServer() as server_b:
        backend = create_backend(EngineConfig(backend="vllm", api_bases=(server_a.base_url, server_b.base_url),
                                              served_model="google/diffusiongemma-26B-A4B-it",
                                              device_usd_per_hour=3600.0))
        assert isinstance(backend, VllmBackend)
        await backend.start()
        request = GenerationRequest(request_id="v1", messages=[{"role": "user", "content": "one two"}],
                                    max_tokens=9, seed=3, stop=["zz"])
        done = await backend.generate(request)
        assert done.text == "echo: one two" and done.completion_tokens == 3 and done.prompt_tokens == 2
        assert done.device_seconds > 0 and done.cost_usd == pytest.approx(done.device_seconds)
        events = [e async for e in backend.stream(request)]
        assert all(isinstance(e, StreamDelta) for e in events[:-1]) and isinstance(events[-1], Completion)
        assert "".join(e.text for e in events[:-1]) == events[-1].text == "echo: one two"
        assert events[-1].completion_tokens == 3
        # Each delta says what the request has used so far (vLLM's continuous usage stats): what a stream its
        # client leaves midway is charged.
        deltas = [e for e in events if isinstance(e, StreamDelta)]
        assert [d.completion_tokens for d in deltas] == [1, 2, 3] and {d.prompt_tokens for d in deltas} == {2}
        assert 0 < deltas[0].device_seconds <= deltas[-1].device_seconds
        assert deltas[-1].cost_usd == pytest.approx(deltas[-1].device_seconds)
        sent = (server_a.state.received + server_b.state.received)
        assert {r.body["model"] for r in sent} == {"google/diffusiongemma-26B-A4B-it"}
        assert sent[0].body["max_tokens"] == 9 and sent[0].body["stop"] == ["zz"] and sent[0].body["seed"] == 3
        await backend.stop()


def test_the_planner_knows_each_backends_capabilities_before_loading_it() -> None:
    from local_engine.engine import DiffusionEngine

    assert backend_capabilities("transformers") is DiffusionEngine.capabilities
    assert DiffusionEngine.capabilities.missing(SamplingOptions(logprobs=True, top_k=3)) == ["logprobs", "top_k"]
    assert backend_capabilities("vllm") is VllmBackend.capabilities
    assert VllmBackend.capabilities.missing(SamplingOptions(logprobs=True, top_logprobs=2, frequency_penalty=1,
                                                            presence_penalty=1, logit_bias={"1": 2}, top_k=3,
                                                            min_p=0.1, repetition_penalty=1.1)) == []


async def test_sampling_options_are_sent_and_logprobs_returned() -> None:
    async with SimulatorServer() as server:
        backend = VllmBackend(EngineConfig(backend="vllm", api_bases=(server.base_url,)))
        await backend.start()
        options = SamplingOptions(logprobs=True, top_logprobs=1, presence_penalty=0.5, logit_bias={"7": -100},
                                  top_k=8, min_p=0.2, repetition_penalty=1.3)
        request = GenerationRequest(request_id="o", messages=[{"role": "user", "content": "a b"}], options=options)
        done = await backend.generate(request)
        assert done.logprobs is not None and "".join(t["token"] for t in done.logprobs) == done.text == "echo: a b"
        assert [len(t["top_logprobs"]) for t in done.logprobs] == [1, 1, 1]
        events = [e async for e in backend.stream(request)]
        deltas = [e for e in events if isinstance(e, StreamDelta)]
        assert all(d.logprobs is not None and [t["token"] for t in d.logprobs] == [d.text] for d in deltas)
        assert isinstance(events[-1], Completion) and events[-1].logprobs == done.logprobs
        for received in server.state.received:
            assert {k: received.body.get(k) for k in options.asked()} == options.asked()
        plain = await backend.generate(GenerationRequest(request_id="p", messages=HI))
        assert plain.logprobs is None and "logprobs" not in server.state.received[-1].body
        await backend.stop()


async def test_unreachable_server_is_unavailable() -> None:
    backend = VllmBackend(EngineConfig(backend="vllm", api_bases=("http://127.0.0.1:9/v1",)))
    await backend.start()
    with pytest.raises(EngineUnavailableError):
        await backend.generate(GenerationRequest(request_id="x", messages=[{"role": "user", "content": "hi"}]))
    await backend.stop()


DEAD = "http://127.0.0.1:9/v1"  # nothing listens on the discard port
HI = [{"role": "user", "content": "hi"}]


async def test_a_pool_fails_over_before_anything_is_streamed() -> None:
    async with SimulatorServer() as failing, SimulatorServer() as healthy:
        backend = VllmBackend(EngineConfig(backend="vllm", api_bases=(DEAD, failing.base_url, healthy.base_url)))
        await backend.start()
        failing.state.faults.append(Fault(status=500))
        done = await backend.generate(GenerationRequest(request_id="a", messages=HI))
        assert done.text == "echo: hi"
        events = [e async for e in backend.stream(GenerationRequest(request_id="b", messages=HI))]
        assert isinstance(events[-1], Completion) and events[-1].text == "echo: hi"
        assert len(healthy.state.received) == 2
        # the failed servers sit out their cool-down: the next request goes straight to the healthy one
        await backend.generate(GenerationRequest(request_id="c", messages=HI))
        assert len(healthy.state.received) == 3 and len(failing.state.received) == 1
        assert all(clock.in_flight == 0 for clock in backend._clocks.values())
        await backend.stop()


async def test_a_server_silent_past_timeout_s_is_failed_over() -> None:
    """A server that takes the request and then says nothing (a hung engine behind a live socket) held each
    request for a fixed 120 s; `local.timeout_s` bounds that silence, then the next server answers."""
    async with SimulatorServer() as hung, SimulatorServer() as healthy:
        backend = VllmBackend(EngineConfig(backend="vllm", api_bases=(hung.base_url, healthy.base_url), timeout_s=1))
        await backend.start()
        hung.state.faults.extend([Fault(delay_s=30)] * 2)
        started = time.monotonic()
        done = await backend.generate(GenerationRequest(request_id="a", messages=HI))
        assert done.text == "echo: hi" and time.monotonic() - started < 10
        assert len(hung.state.received) == 1 and len(healthy.state.received) == 1
        await backend.stop()


async def test_ready_while_some_server_of_the_pool_is_alive() -> None:
    """/readyz said the local model was ready with every vLLM server down, while each request got a 503."""
    async with SimulatorServer() as alive:
        pool = VllmBackend(EngineConfig(backend="vllm", api_bases=(DEAD, alive.base_url)))
        dead_only = VllmBackend(EngineConfig(backend="vllm", api_bases=(DEAD,)))
        for backend in (pool, dead_only):
            await backend.start()
        assert await pool.is_ready() and not await dead_only.is_ready()
        alive.state.healthy = False  # its engine died behind a live API server
        assert not await pool.is_ready()
        for backend in (pool, dead_only):
            await backend.stop()


async def test_busy_servers_are_a_full_queue_and_refusals_are_not_retried() -> None:
    async with SimulatorServer() as a, SimulatorServer() as b:
        backend = VllmBackend(EngineConfig(backend="vllm", api_bases=(a.base_url, b.base_url)))
        await backend.start()
        a.state.faults.append(Fault(status=429, retry_after_s=7))
        b.state.faults.append(Fault(status=503, retry_after_s=3))
        with pytest.raises(QueueFullError) as busy:
            await backend.generate(GenerationRequest(request_id="a", messages=HI))
        assert busy.value.retry_after_s == 3
        a.state.faults.append(Fault(status=400, message="prompt too long"))
        with pytest.raises(RequestRejectedError, match="prompt too long") as refused:
            [e async for e in backend.stream(GenerationRequest(request_id="b", messages=HI))]
        assert refused.value.status_code == 400 and len(b.state.received) == 1  # b was not asked again
        assert all(clock.in_flight == 0 for clock in backend._clocks.values())
        await backend.stop()


async def test_a_malformed_stream_chunk_is_the_servers_failure() -> None:
    # Not JSON, or JSON that is not a chunk object: an EngineError (an OpenAI-style error for the client),
    # not a JSONDecodeError escaping as a 500 that also drops the client's connection.
    async with SimulatorServer() as server:
        backend = VllmBackend(EngineConfig(backend="vllm", api_bases=(server.base_url,)))
        await backend.start()
        server.state.faults.append(Fault(malformed_chunk_after=1))
        with pytest.raises(EngineUnavailableError, match="malformed stream chunk"):
            [e async for e in backend.stream(GenerationRequest(request_id="a", messages=HI))]
        server.state.replies.append("fine")
        events = [e async for e in backend.stream(GenerationRequest(request_id="b", messages=HI))]
        assert isinstance(events[-1], Completion) and events[-1].text == "fine"
        assert all(clock.in_flight == 0 for clock in backend._clocks.values())
        await backend.stop()


class Unfinished(Simulator):
    """Streams the answer and `[DONE]`, but no chunk with a finish_reason: the answer never said it ended."""

    def chunks(self, body: dict[str, Any], reply: str) -> list[dict[str, Any]]:
        return [c for c in super().chunks(body, reply) if not any(ch["finish_reason"] for ch in c["choices"])]


async def test_a_stream_without_a_finish_reason_is_not_a_whole_answer() -> None:
    # vLLM ends a request that fails midway with an error event, then the body's clean end: what was
    # streamed before is part of an answer, not one to pass on (or to verify and serve) as finished.
    async with SimulatorServer() as server, SimulatorServer(Unfinished()) as unfinished:
        backend = VllmBackend(EngineConfig(backend="vllm", api_bases=(server.base_url,)))
        await backend.start()
        server.state.replies.append("one two three four")
        server.state.faults.append(Fault(error_in_stream_after=2, message="engine dead"))
        with pytest.raises(GenerationFailedError, match="engine dead"):
            [e async for e in backend.stream(GenerationRequest(request_id="a", messages=HI))]
        await backend.stop()
        backend = VllmBackend(EngineConfig(backend="vllm", api_bases=(unfinished.base_url,)))
        await backend.start()
        with pytest.raises(EngineUnavailableError, match="finish_reason"):
            [e async for e in backend.stream(GenerationRequest(request_id="b", messages=HI))]
        assert all(clock.in_flight == 0 for clock in backend._clocks.values())
        await backend.stop()


async def test_concurrent_requests_share_the_servers_busy_time() -> None:
    # Eight requests on one server at once share its batched GPU: their device times add up to the time
    # it was busy (not 2.7x it, as each request's latency divided by the requests in flight when it
    # started gave), and the first to arrive is not charged eight times the last.
    async with SimulatorServer() as server:
        backend = VllmBackend(EngineConfig(backend="vllm", api_bases=(server.base_url,)))
        await backend.start()
        server.state.faults.extend(Fault(delay_s=0.3) for _ in range(8))

        async def one(i: int) -> float:
            events = [e async for e in backend.stream(GenerationRequest(request_id=f"r{i}", messages=HI))]
            assert isinstance(events[-1], Completion)
            return events[-1].device_seconds

        began = time.perf_counter()
        seconds = await asyncio.gather(*(one(i) for i in range(8)))
        elapsed = time.perf_counter() - began
        assert 0.3 <= sum(seconds) <= elapsed
        assert max(seconds) < 2 * min(seconds)
        await backend.stop()


async def test_a_server_failing_before_the_first_token_is_failed_over_like_a_5xx() -> None:
    # A dead engine behind a live API server answers 200 and then an error event; a server can also drop
    # the connection right after the headers. Nothing of the answer has been streamed yet: the next server
    # answers, and the failed ones sit out their cool-down.
    async with SimulatorServer() as erring, SimulatorServer() as cut, SimulatorServer() as healthy:
        backend = VllmBackend(EngineConfig(backend="vllm", api_bases=(erring.base_url, cut.base_url,
                                                                      healthy.base_url)))
        await backend.start()
        erring.state.faults.append(Fault(error_in_stream_after=0, message="EngineDeadError"))
        cut.state.faults.append(Fault(break_stream_after=0))
        events = [e async for e in backend.stream(GenerationRequest(request_id="a", messages=HI))]
        assert isinstance(events[-1], Completion) and events[-1].text == "echo: hi"
        assert [len(s.state.received) for s in (erring, cut, healthy)] == [1, 1, 1]
        await backend.generate(GenerationRequest(request_id="b", messages=HI))
        assert [len(s.state.received) for s in (erring, cut, healthy)] == [1, 1, 2]
        assert all(clock.in_flight == 0 for clock in backend._clocks.values())
        await backend.stop()
