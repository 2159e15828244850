"""Several engine streams read as one (a local request's n choices): closing it cancels every row."""

from __future__ import annotations

import asyncio
from pathlib import Path

from local_engine import Completion, EngineConfig, GenerationRequest, MeteredStream, StreamDelta
from local_engine.engine import DiffusionEngine
from local_engine.loading import load_model
from router.streams import merged, primed

MSG = [{"role": "user", "content": "Sort: 3, 1, 2"}]


async def _engine(checkpoint: Path) -> DiffusionEngine:
    config = EngineConfig(model=str(checkpoint), max_tokens=64)
    engine = DiffusionEngine(load_model(config), config)
    await engine.start()
    return engine


async def test_all_choices_arrive_each_with_its_index(random_checkpoint: Path) -> None:
    engine = await _engine(random_checkpoint)
    try:
        streams = [engine.stream(GenerationRequest(request_id="r", messages=MSG, max_tokens=12, seed=i))
                   for i in range(3)]
        events: dict[int, list[StreamDelta | Completion]] = {0: [], 1: [], 2: []}
        async for index, event in merged(streams):
            events[index].append(event)
        singles = [await engine.generate(GenerationRequest(request_id="s", messages=MSG, max_tokens=12, seed=i))
                   for i in range(3)]
        for i in range(3):
            assert isinstance(events[i][-1], Completion) and events[i][-1].text == singles[i].text
            assert "".join(e.text for e in events[i][:-1] if isinstance(e, StreamDelta)) == singles[i].text
    finally:
        await engine.stop()


async def test_closing_the_merged_stream_cancels_every_row(random_checkpoint: Path) -> None:
    engine = await _engine(random_checkpoint)
    try:
        streams = [engine.stream(GenerationRequest(request_id=f"r{i}", messages=MSG, max_tokens=64, seed=i))
                   for i in range(3)]
        reader = merged(streams)
        await reader.__anext__()  # the first canvas of some choice
        await reader.aclose()  # type: ignore[attr-defined]
        for _ in range(100):
            if not engine._active and engine._waiting.empty():
                break
            await asyncio.sleep(0.02)
        assert engine._active == [] and engine._waiting.empty()
    finally:
        await engine.stop()


async def test_a_primed_stream_still_says_what_its_row_used(random_checkpoint: Path) -> None:
    """A local stream's first event is awaited before any byte is sent (`primed`); the stream handed on must still
    say what its row has used, a canvas finished or not, or a client leaving mid-canvas is billed only the
    canvases it received."""
    engine = await _engine(random_checkpoint)
    try:
        (stream,) = await primed([engine.stream(GenerationRequest(request_id="p", messages=MSG, max_tokens=64,
                                                                  seed=1))])
        first = await anext(stream)
        assert isinstance(first, StreamDelta) and isinstance(stream, MeteredStream)
        spent = stream.spent()
        assert spent is not None and spent.device_seconds >= first.device_seconds > 0
        await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await engine.stop()
