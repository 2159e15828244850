"""Real servers for tests: uvicorn running an app, and the simulated provider, each on 127.0.0.1:0."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from gateway.simulator import Simulator, SimulatorServer


class LoopThread:
    """An asyncio loop in a daemon thread, for servers the synchronous tests talk to."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


@contextlib.contextmanager
def simulator_server(state: Simulator | None = None) -> Iterator[SimulatorServer]:
    """A simulated OpenAI-compatible provider on its own loop thread."""
    loop = LoopThread()
    server = SimulatorServer(state)
    loop.run(server.start())
    try:
        yield server
    finally:
        loop.run(server.stop())
        loop.close()


@contextlib.contextmanager
def serve_in_thread(app: Any, *, startup_timeout_s: float = 120) -> Iterator[str]:
    """Runs `app` under uvicorn on a free port; yields its base URL; stops it (lifespan shutdown included)."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on",
                            loop="asyncio", timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the gateway failed to start")
        if time.monotonic() > deadline:
            raise TimeoutError("the gateway did not start in time")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
