"""A submitted request's handle on the event loop's side: its events, and giving up on it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from local_engine.interface import Completion, StreamDelta
from local_engine.rows import Row


def retrieved(task: asyncio.Task[Row]) -> None:
    """Marks a submission's failure as seen: a stream never iterated does not log it at collection."""
    if not task.cancelled():
        task.exception()


def abandon(task: asyncio.Task[Row]) -> None:
    """Cancels a submission its caller gave up on: before its row is queued, or the row itself."""
    if not task.done():
        task.cancel()
    elif not task.cancelled() and task.exception() is None:
        task.result().cancelled = True


def submitted_row(task: asyncio.Task[Row]) -> Row | None:
    """The row a submission queued; None while it is still being prepared, or when it never was."""
    if task.done() and not task.cancelled() and task.exception() is None:
        return task.result()
    return None


class RowEvents:
    """A row's events; closing them cancels the row even when no event was ever asked for (the row is
    queued at `stream()`, and an async generator that never started skips its `finally` when closed)."""

    def __init__(self, events: AsyncIterator[StreamDelta | Completion], cancel: Callable[[], None],
                 spent: Callable[[], StreamDelta | None]) -> None:
        self._events = events
        self._cancel = cancel
        self.spent = spent  # what the row has used so far (`MeteredStream`): billed when its client leaves

    def __aiter__(self) -> RowEvents:
        return self

    async def __anext__(self) -> StreamDelta | Completion:
        return await anext(self._events)

    async def aclose(self) -> None:
        self._cancel()  # harmless once the row finished
        await self._events.aclose()  # type: ignore[attr-defined]
