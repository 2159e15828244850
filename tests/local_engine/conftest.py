"""The engine fixture the local-engine tests share: engines on the random test checkpoint, stopped after."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from local_engine import EngineConfig
from local_engine.engine import DiffusionEngine
from local_engine.loading import load_model

EngineFactory = Callable[..., Awaitable[Any]]


@pytest.fixture
async def engine_factory(random_checkpoint: Path) -> AsyncIterator[EngineFactory]:
    """`await engine_factory(cls=DiffusionEngine, **config)`; every engine made is stopped at teardown (its
    worker joined: one still in a forward pass when the interpreter exits aborts the process). An engine class
    that holds its worker on purpose releases it in `release()` first."""
    engines: list[DiffusionEngine] = []

    async def make(cls: type[DiffusionEngine] = DiffusionEngine, **kw: Any) -> Any:
        config = EngineConfig(model=str(random_checkpoint), max_tokens=64, **kw)
        engine = cls(load_model(config), config)
        await engine.start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        getattr(engine, "release", lambda: None)()
        await engine.stop()
