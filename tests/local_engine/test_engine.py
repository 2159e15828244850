"""The scheduler on a tiny random checkpoint (join, leave, cancel, queue full, failures, metering, seeds), and
answer parity with seeded `generate()` on the bundled trained one."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from pathlib import Path

import pytest
import torch

from local_engine import (
    Completion,
    ContextLengthError,
    EngineConfig,
    EngineUnavailableError,
    GenerationFailedError,
    GenerationRequest,
    QueueFullError,
    StreamDelta,
    choice_limit,
    create_backend,
)
from local_engine import engine as engine_module
from local_engine.engine import DiffusionEngine
from local_engine.loading import check_checkpoint, load_model
from local_engine.training.config import CANVAS_LENGTH
from local_engine.training.evaluate import held_out

MSG = [{"role": "user", "content": "What is 2 + 2?"}]


def req(rid: str, max_tokens: int = 16, seed: int = 1, **kw: object) -> GenerationRequest:
    return GenerationRequest(request_id=rid, messages=MSG, max_tokens=max_tokens, seed=seed, **kw)  # type: ignore[arg-type]


class FailingEngine(DiffusionEngine):
    """Raises inside the batch for one request id (an engine bug hitting one row)."""

    def _finish_canvas(self, slot):  # type: ignore[no-untyped-def]
        if slot.row.request.request_id == "boom":
            raise RuntimeError("simulated out of memory")
        return super()._finish_canvas(slot)


async def test_loads_through_from_pretrained(random_checkpoint: Path) -> None:
    backend = create_backend(EngineConfig(model=str(random_checkpoint)))
    assert isinstance(backend, DiffusionEngine)
    assert backend.sampling.canvas_length == 8 and backend.sampling.max_steps == 4
    # <bos> <start_of_turn> user \n | What _is _ 2 _ + _ 2 ? | <end_of_turn> \n <start_of_turn> m o d e l \n
    assert backend.count_prompt_tokens(MSG) == 4 + 9 + 9


async def test_temperature_zero_without_a_seed_repeats_its_answer(engine_factory) -> None:  # type: ignore[no-untyped-def]
    engine = await engine_factory()
    answers = []
    for i, prompt in enumerate(["What is 2 + 2?", "Sort ascending: 5, 1, 3"] * 3):
        messages = [{"role": "user", "content": prompt}]
        greedy = engine.generate(GenerationRequest(request_id=f"g{i}", messages=messages, max_tokens=16,
                                                   temperature=0.0))
        sampled = engine.generate(GenerationRequest(request_id=f"s{i}", messages=messages, max_tokens=16))
        answers.append((await asyncio.gather(greedy, sampled))[0].text)  # unseeded traffic moves the global RNG
    assert answers[0::2] == [answers[0]] * 3 and answers[1::2] == [answers[1]] * 3


async def test_max_tokens_is_trimmed_exactly_and_seeds_reproduce(engine_factory) -> None:  # type: ignore[no-untyped-def]
    engine = await engine_factory()
    for max_tokens in (1, 5, 13):
        first = await engine.generate(req(f"a{max_tokens}", max_tokens=max_tokens, seed=3))
        again = await engine.generate(req(f"b{max_tokens}", max_tokens=max_tokens, seed=3))
        assert first.text == again.text and first.completion_tokens == again.completion_tokens
        assert first.completion_tokens <= max_tokens
        if first.finish_reason == "length":
            assert first.completion_tokens == max_tokens


async def test_the_context_window_refuses_a_full_prompt_and_ends_answers_at_its_edge(engine_factory) -> None:  # type: ignore[no-untyped-def]
    wide = await engine_factory()
    assert wide.context_length == 1024  # the checkpoint's max_position_embeddings
    engine = await engine_factory(max_model_len=30)
    assert engine.context_length == 30
    prompt = engine.count_prompt_tokens(MSG)  # 22 tokens: 8 left
    edge = await engine.generate(GenerationRequest(request_id="edge", messages=MSG, max_tokens=64, seed=1))
    assert edge.prompt_tokens == prompt and edge.completion_tokens <= 30 - prompt
    unbounded = await wide.generate(GenerationRequest(request_id="wide", messages=MSG, max_tokens=64, seed=1))
    assert unbounded.completion_tokens > 30 - prompt, "the random model must run past the edge for this to test it"
    tight = await engine_factory(max_model_len=prompt)
    with pytest.raises(ContextLengthError, match=f"context is {prompt} tokens, and these messages are {prompt}"):
        await tight.generate(GenerationRequest(request_id="full", messages=MSG, max_tokens=1))
    assert tight.ticks == 0  # refused at the door: nothing was computed


async def test_a_max_model_len_above_the_checkpoints_window_is_refused(random_checkpoint: Path) -> None:
    """It can only lower the window: 5,000 on a 1,024-token checkpoint was quietly served as 1,024 (vLLM refuses
    it). `draftgate serve` checks it before it starts (check_checkpoint); the engine itself refuses it too."""
    config = EngineConfig(model=str(random_checkpoint), max_model_len=5000)
    with pytest.raises(EngineUnavailableError, match=r"max_model_len 5000 is more than .*\(1024 tokens"):
        check_checkpoint(config)
    with pytest.raises(EngineUnavailableError, match="max_model_len 5000"):
        DiffusionEngine(load_model(config), config)
    check_checkpoint(EngineConfig(model=str(random_checkpoint), max_model_len=1024))


def test_a_model_path_that_does_not_exist_says_so(tmp_path: Path) -> None:
    """transformers reads a missing path as a malformed hub id: "Repo id must be in the form 'repo_name'..."."""
    for missing in (str(tmp_path / "no-such-model"), "./no-such-model", "~/no-such-model"):
        config = EngineConfig(model=missing)
        for check in (check_checkpoint, load_model):
            with pytest.raises(EngineUnavailableError) as info:
                check(config)
            assert str(info.value) == f"cannot load the local model {missing!r}: no such directory"


async def test_rows_join_mid_batch_and_short_rows_leave_first(engine_factory) -> None:  # type: ignore[no-untyped-def]
    engine = await engine_factory()
    long_stream = engine.stream(req("long", max_tokens=64, seed=11))
    first = await long_stream.__anext__()  # the long row has finished at least one canvas
    assert isinstance(first, (StreamDelta, Completion))
    short = await engine.generate(req("short", max_tokens=2, seed=5))
    assert engine.admissions["short"].tick > engine.admissions["long"].tick
    rest = [e async for e in long_stream]
    final = rest[-1] if rest else first
    assert isinstance(final, Completion)
    # the short row used only its own canvases: it did not wait for the long one to finish
    assert len(short.confidence.steps_per_canvas) == 1
    assert len(final.confidence.steps_per_canvas) >= 1


async def test_the_admission_record_keeps_only_the_newest(engine_factory, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(engine_module, "ADMISSIONS_KEPT", 3)
    engine = await engine_factory()
    for i in range(5):
        await engine.generate(req(f"r{i}", max_tokens=2, seed=i))
    assert list(engine.admissions) == ["r2", "r3", "r4"]


async def test_cancel_removes_the_row_and_others_finish(engine_factory) -> None:  # type: ignore[no-untyped-def]
    engine = await engine_factory()
    victim = asyncio.create_task(engine.generate(req("victim", max_tokens=64, seed=2)))
    other = asyncio.create_task(engine.generate(req("other", max_tokens=8, seed=4)))
    await asyncio.sleep(0.05)
    victim.cancel()
    with pytest.raises(asyncio.CancelledError):
        await victim
    done = await other
    assert done.completion_tokens <= 8
    for _ in range(100):
        if not engine._active:
            break
        await asyncio.sleep(0.02)
    assert engine._active == []


async def test_queue_full_is_refused_with_retry_after(engine_factory) -> None:  # type: ignore[no-untyped-def]
    engine = await engine_factory(max_batch_size=1, max_queue=2)
    # Submitted at once: the batch's one place and the queue's two take three; whether or not the worker
    # admitted q0 meanwhile, a fourth finds no room.
    running = [engine.stream(req(f"q{i}", max_tokens=64, seed=i)) for i in range(3)]
    with pytest.raises(QueueFullError) as info:
        engine.stream(req("extra"))
    assert info.value.retry_after_s >= 1 and info.value.queued in (2, 3)
    for stream in running:
        assert isinstance([e async for e in stream][-1], Completion)


async def test_a_burst_onto_an_idle_engine_fills_the_batch_before_the_queue(engine_factory) -> None:  # type: ignore[no-untyped-def]
    """Arrivals join the batch at the next tick: free places in it are room, not only `max_queue`."""
    engine = await engine_factory(max_batch_size=4, max_queue=1)
    streams = [engine.stream(req(f"b{i}", max_tokens=4, seed=i)) for i in range(5)]  # submitted at once
    for stream in streams:
        assert isinstance([e async for e in stream][-1], Completion)
    assert choice_limit(EngineConfig(model="m", max_batch_size=4, max_queue=1)) == 5  # the planner's n limit


async def test_an_exception_fails_one_request_not_the_batch(engine_factory) -> None:  # type: ignore[no-untyped-def]
    engine = await engine_factory(FailingEngine)
    results = await asyncio.gather(engine.generate(req("boom")), engine.generate(req("fine", max_tokens=4)),
                                   return_exceptions=True)
    assert isinstance(results[0], GenerationFailedError) and "out of memory" in str(results[0])
    assert isinstance(results[1], Completion)
    assert isinstance(await engine.generate(req("after", max_tokens=3)), Completion)  # the engine recovered


async def test_metering_shares_add_up_to_device_time(engine_factory) -> None:  # type: ignore[no-untyped-def]
    engine = await engine_factory(device_usd_per_hour=3600.0)
    results = await asyncio.gather(*(engine.generate(req(f"m{i}", max_tokens=4 + i, seed=i)) for i in range(6)))
    total = sum(r.device_seconds for r in results)
    assert total == pytest.approx(engine.meter.total_seconds, rel=1e-9)
    assert all(r.device_seconds > 0 for r in results)
    assert all(r.cost_usd == pytest.approx(r.device_seconds) for r in results)  # $3600/h = $1/s


async def test_stream_deltas_concatenate_to_the_text_and_stops_trim(engine_factory) -> None:  # type: ignore[no-untyped-def]
    engine = await engine_factory()
    events = [e async for e in engine.stream(req("s", max_tokens=30, seed=9))]
    final = events[-1]
    assert isinstance(final, Completion)
    assert "".join(e.text for e in events[:-1]) == final.text
    if len(final.text) >= 3:
        stop = final.text[1:3]
        stopped = await engine.generate(req("t", max_tokens=30, seed=9, stop=(stop,)))
        assert stopped.text == final.text[: final.text.find(stop)] and stopped.finish_reason == "stop"


async def test_stopped_engine_refuses_work(engine_factory) -> None:  # type: ignore[no-untyped-def]
    engine = await engine_factory()
    await engine.stop()
    with pytest.raises(EngineUnavailableError):
        await engine.generate(req("late"))


async def test_confidence_is_the_models_own_entropy_even_at_temperature_zero(engine_factory) -> None:  # type: ignore[no-untyped-def]
    engine = await engine_factory()
    try:
        greedy = await engine.generate(req("greedy", temperature=0.0))
        sampled = await engine.generate(req("sampled", temperature=1.0))
    finally:
        await engine.stop()
    # An untrained model is unsure of everything: greedy decoding must not hide that (one-hot = 0).
    assert greedy.confidence.max_entropy > 0.5 and greedy.confidence.mean_entropy > 0.1
    assert sampled.confidence.max_entropy > 0.5


class GatedEngine(DiffusionEngine):
    """Holds the worker at the first canvas commit of request "long" until the test lets it go."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.gate = threading.Event()
        self.held_unfinished: bool | None = None

    def _finish_canvas(self, slot):  # type: ignore[no-untyped-def]
        super()._finish_canvas(slot)
        if slot.row.request.request_id == "long" and self.held_unfinished is None:
            self.held_unfinished = slot.row.finish_reason is None
            assert self.gate.wait(10)


async def test_an_arrival_joins_the_running_batch_at_its_canvas_boundary(engine_factory) -> None:  # type: ignore[no-untyped-def]
    engine = await engine_factory(GatedEngine)
    long_task = asyncio.create_task(engine.generate(req("long", max_tokens=64, seed=11)))
    while engine.held_unfinished is None:  # the worker holds at the long row's first committed canvas
        await asyncio.sleep(0.005)
    assert engine.held_unfinished, "the long row must still run after its first canvas"
    short_task = asyncio.create_task(engine.generate(req("short", max_tokens=2, seed=5)))
    await asyncio.sleep(0)  # submitted: queued while the long row waits for its canvas boundary
    assert engine.stats.canvas_boundaries == 0 and engine.stats.joined_running == 0
    engine.gate.set()
    short, long = await short_task, await long_task
    # It was merged into the running batch (one row running), on the boundary tick, and shared its passes:
    # long was admitted and took its first step on one tick, committed its first canvas steps later, and
    # the very next tick encoded that canvas and admitted short.
    assert engine.admissions["short"].joined_with == 1 and engine.stats.joined_running == 1
    first_canvas_steps = long.confidence.steps_per_canvas[0]
    assert engine.admissions["short"].tick == engine.admissions["long"].tick + first_canvas_steps
    assert engine.stats.canvas_boundaries >= 1
    assert engine.stats.rows_per_pass[2] >= 1
    assert engine.stats.encoder_passes >= 3  # long's prompt, the short prompt, long's canvases; never re-encoded
    assert len(long.confidence.steps_per_canvas) >= 2 and len(short.confidence.steps_per_canvas) == 1
    # The batch computed each request's steps exactly once: row passes equal the steps reported per request.
    steps = sum(long.confidence.steps_per_canvas) + sum(short.confidence.steps_per_canvas)
    assert engine.stats.row_passes == steps


async def test_a_seed_gives_generates_answer_alone_and_in_a_batch(engine_factory, random_checkpoint: Path) -> None:  # type: ignore[no-untyped-def]
    engine = await engine_factory()
    loaded = load_model(EngineConfig(model=str(random_checkpoint)))
    ids = torch.tensor([engine._prompt_ids(MSG)])
    eos = loaded.model.generation_config.eos_token_id
    expected = {}
    for seed in (3, 4, 5, 6):
        torch.manual_seed(seed)  # generate() draws from the global generator in the order the engine draws
        out = loaded.model.generate(ids, max_new_tokens=16).sequences[0, ids.shape[1]:].tolist()
        expected[seed] = (out[: out.index(eos)] if eos in out else out)[:16]
    alone = {s: await engine.generate(req(f"alone{s}", max_tokens=16, seed=s)) for s in expected}
    together = await asyncio.gather(*(engine.generate(req(f"batch{s}", max_tokens=16, seed=s)) for s in expected))
    assert engine.stats.rows_per_pass[4] >= 1  # the four did share passes
    for seed, batched in zip(expected, together, strict=True):
        assert alone[seed].completion_tokens == len(expected[seed])
        assert alone[seed].text == loaded.tokenizer.decode(expected[seed], skip_special_tokens=True)
        assert batched.text == alone[seed].text
        a, b = alone[seed].confidence, batched.confidence
        assert (a.steps_per_canvas, a.step_cap_hit) == (b.steps_per_canvas, b.step_cap_hit)
        assert b.max_entropy == pytest.approx(a.max_entropy, abs=1e-4)  # batched matmuls round differently


async def test_a_failed_batched_pass_fails_its_rows_and_the_engine_goes_on(engine_factory) -> None:  # type: ignore[no-untyped-def]
    engine = await engine_factory()
    real_step, calls = engine._batch.step, []

    def failing_once(on_converged):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("simulated device fault")
        return real_step(on_converged)

    engine._batch.step = failing_once
    with pytest.raises(GenerationFailedError, match="device fault"):
        await engine.generate(req("hit", max_tokens=4))
    assert engine._active == []
    assert isinstance(await engine.generate(req("after", max_tokens=4)), Completion)


async def test_staggered_arrivals_across_canvas_boundaries_answer_as_alone(engine_factory) -> None:  # type: ignore[no-untyped-def]
    engine = await engine_factory()
    specs = [("s0", 40, 21), ("s1", 24, 22), ("s2", 8, 23), ("s3", 32, 24), ("s4", 16, 25)]
    alone = {rid: (await engine.generate(req(f"{rid}-alone", max_tokens=n, seed=s))).text for rid, n, s in specs}
    boundaries_before = engine.stats.canvas_boundaries

    async def staggered(i: int, rid: str, max_tokens: int, seed: int) -> str:
        await asyncio.sleep(0.003 * i)  # arrivals land mid-canvas, at boundaries, or while rows wait
        return (await engine.generate(req(rid, max_tokens=max_tokens, seed=seed))).text

    texts = await asyncio.gather(*(staggered(i, *spec) for i, spec in enumerate(specs)))
    assert dict(zip([s[0] for s in specs], texts, strict=True)) == alone
    assert engine.stats.canvas_boundaries > boundaries_before and engine.stats.joined_running >= 1


async def test_an_arrival_mid_canvas_shares_passes_and_answers_as_alone(engine_factory) -> None:  # type: ignore[no-untyped-def]
    engine = await engine_factory()
    alone = [(await engine.generate(req(f"alone{s}", max_tokens=24, seed=s))).text for s in (31, 32)]
    real_step, gate, held = engine._batch.step, threading.Event(), threading.Event()

    def step_then_hold(on_converged):  # type: ignore[no-untyped-def]
        real_step(on_converged)
        if not held.is_set():  # after the first row's first step: it is mid-canvas now
            held.set()
            assert gate.wait(10)

    engine._batch.step = step_then_hold
    before, boundaries = Counter(engine.stats.rows_per_pass), engine.stats.canvas_boundaries
    first = asyncio.create_task(engine.generate(req("first", max_tokens=24, seed=31)))
    while not held.is_set():
        await asyncio.sleep(0.002)
    second = asyncio.create_task(engine.generate(req("second", max_tokens=24, seed=32)))
    await asyncio.sleep(0)
    gate.set()
    first_done, second_done = await first, await second
    assert [first_done.text, second_done.text] == alone
    assert engine.stats.joined_mid_canvas == 1 and engine.admissions["second"].joined_with == 1
    # One step out of phase all the way: each row crossed its own canvas boundaries while the other was
    # mid-canvas, and neither ever sat out a pass: first alone once, both together, second alone once.
    steps = sum(first_done.confidence.steps_per_canvas)
    assert steps == sum(second_done.confidence.steps_per_canvas) == 12  # 3 canvases x 4 steps (the cap)
    assert engine.stats.rows_per_pass - before == Counter({2: steps - 1, 1: 2})
    assert engine.stats.canvas_boundaries - boundaries == 4  # two each, on different ticks: nobody waited


async def test_batched_engine_gives_seeded_generates_answers_on_the_bundled_model() -> None:
    # Every canvas as long as generate()'s (the checkpoint's); fitted canvases: test_canvas_lengths.py
    config = EngineConfig(max_batch_size=4, max_tokens=64, first_canvas_length=CANVAS_LENGTH)
    loaded = load_model(config)
    engine = DiffusionEngine(loaded, config)
    prompts = [p for _, p, _ in held_out(2)[:12]]
    expected = []
    for i, prompt in enumerate(prompts):
        torch.manual_seed(i)
        ids = torch.tensor([engine._prompt_ids([{"role": "user", "content": prompt}])])
        out = loaded.model.generate(ids).sequences[0, ids.shape[1]:].tolist()
        eos = loaded.model.generation_config.eos_token_id
        expected.append(loaded.tokenizer.decode(out[: out.index(eos)] if eos in out else out, skip_special_tokens=True))
    await engine.start()
    try:  # 12 requests through 4 slots: arrivals join rows that are mid-canvas (the trained model's
        # self-conditioning makes any mix-up between rows at different steps visible in the answers)
        got = await asyncio.gather(*(engine.generate(GenerationRequest(request_id=f"b{i}", seed=i, messages=[
            {"role": "user", "content": p}])) for i, p in enumerate(prompts)))
    finally:
        await engine.stop()
    assert [c.text for c in got] == expected
    assert engine.stats.joined_mid_canvas >= 1


async def test_a_stop_string_counts_the_tokens_generated_not_its_text_re_tokenized(engine_factory) -> None:  # type: ignore[no-untyped-def]
    # A stop string inside a multi-character token ("name" cut at "e") leaves text that re-tokenizes into more
    # tokens than were generated ("n", "a", "m"): usage and the ledger then showed more than max_tokens.
    engine = await engine_factory()
    tokenizer = engine._loaded.tokenizer
    split_tokens = 0
    for seed in range(8):
        full = await engine.generate(req(f"f{seed}", max_tokens=8, seed=seed))
        for stop in dict.fromkeys(full.text[1:]):
            stopped = await engine.generate(req(f"s{seed}", max_tokens=full.completion_tokens, seed=seed,
                                                stop=(stop,)))
            assert stopped.text == full.text[: full.text.find(stop)] and stopped.finish_reason == "stop"
            assert stopped.completion_tokens <= full.completion_tokens
            split_tokens += len(tokenizer(stopped.text, add_special_tokens=False)["input_ids"]) > full.completion_tokens
        if split_tokens:
            return
    raise AssertionError("no stop string split a token: the case this test is about was not met")


class HeldAdmissions(DiffusionEngine):
    """Admits nothing until the test opens the gate: what is queued stays queued meanwhile."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.gate = threading.Event()

    def _admit(self) -> None:
        if self.gate.wait(10):
            super()._admit()

    def release(self) -> None:
        self.gate.set()


async def test_closing_a_stream_never_iterated_cancels_its_row(engine_factory) -> None:  # type: ignore[no-untyped-def]
    # stream() queues the row at once. A caller that opens several (a request's n choices) and closes them
    # unread when a later one is refused (QueueFullError) must not leave them computing for nobody: an
    # async generator that never started skips its `finally`, so closing did not cancel the row.
    engine = await engine_factory(cls=HeldAdmissions)
    unread = engine.stream(req("unread", max_tokens=30))
    await unread.aclose()
    engine.release()
    served = await engine.generate(req("served", max_tokens=4))
    assert served.completion_tokens > 0
    assert "served" in engine.admissions and "unread" not in engine.admissions
