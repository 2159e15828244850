"""`python -m tests.support.simulator_main`: the simulated provider in its own process, for load tests.

Prints its base URL on the first line of stdout, then serves until stdin closes or SIGTERM arrives, so it
never outlives the test that started it. `--delay-s` stalls every answer (keeps requests in flight).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from gateway.simulator import Fault, Simulator, SimulatorServer


async def _main(delay_s: float) -> None:
    state = Simulator(record=False)
    server = SimulatorServer(state)
    await server.start()
    if delay_s:
        # An endless supply of stalls: cheap, and the deque never runs dry during a bounded test.
        state.faults.extend(Fault(delay_s=delay_s) for _ in range(100_000))
    print(server.base_url, flush=True)
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, done.set)
    loop.add_reader(sys.stdin.fileno(), lambda: done.set() if not sys.stdin.buffer.read1(1024) else None)
    await done.wait()
    await server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--delay-s", type=float, default=0.0)
    asyncio.run(_main(parser.parse_args().delay_s))
