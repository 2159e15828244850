"""Soak: the load test's traffic for longer, with figures. 127.0.0.1 only; it stops by itself.

    python -m bench.soak --seconds 120 --clients 128 [--no-local]

Starts the simulated provider and a real `draftgate serve` (tests/support/processes.py), runs N openai-SDK
clients (hosted, streamed, and the bundled local model unless --no-local), samples the gateway's RSS every
second, and prints throughput, latency, errors and memory. Exits non-zero on any client error, on RSS growth
past --rss-limit-mib after the first 10% of the run, or on a request missing from the ledger.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.support.load import LoadResult, run_load
from tests.support.processes import MASTER_KEY, GatewayProcess, process_config, simulator_process


async def _soak(gw: GatewayProcess, key: str, args: argparse.Namespace) -> tuple[LoadResult, list[tuple[float, int]]]:
    kinds = {"hosted_stream": args.clients * 3 // 10}
    if not args.no_local:
        kinds.update(local=4, local_stream=4)
    load = asyncio.create_task(run_load(gw.url + "/v1", key, concurrency=args.clients,
                                        duration_s=args.seconds, kinds=kinds))
    started, samples = time.monotonic(), []
    while not load.done():
        samples.append((time.monotonic() - started, gw.rss_bytes()))
        await asyncio.sleep(1.0)
    return await load, samples


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--clients", type=int, default=128)
    parser.add_argument("--no-local", action="store_true")
    parser.add_argument("--rss-limit-mib", type=float, default=64)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="draftgate-soak-"))
    with simulator_process() as sim:
        config = tmp / "draftgate.yaml"
        config.write_text(process_config(sim, local=not args.no_local, timeout_s=120))
        gw = GatewayProcess(config, tmp / "data", tmp / "gateway.log")
        try:
            gw.start()
            key = httpx.post(gw.url + "/admin/keys", json={"name": "soak", "team": "soak"},
                             headers={"authorization": f"Bearer {MASTER_KEY}"}).json()["key"]
            result, samples = asyncio.run(_soak(gw, key, args))
            gw.terminate()
        finally:
            gw.stop()
    print(result.summary())
    settled = [rss for t, rss in samples if t >= args.seconds * 0.1] or [samples[-1][1]]
    growth_mib = (max(settled) - settled[0]) / 2**20
    every = max(1, len(samples) // 12)
    print("RSS MiB over time: " + " ".join(f"{t:.0f}s={rss / 2**20:.0f}" for t, rss in samples[::every]))
    print(f"RSS growth after warm-up: {growth_mib:.1f} MiB (limit {args.rss_limit_mib:g})")
    db = gw.database()
    recorded = {r.request_id for r in db.iter_records()}
    db.dispose()
    missing = [r.request_id for r in result.completed if r.request_id not in recorded]
    print(f"ledger: {len(recorded)} rows, {len(missing)} answered request(s) missing; logs in {tmp}")
    return int(bool(result.errors) or growth_mib > args.rss_limit_mib or bool(missing))


if __name__ == "__main__":
    sys.exit(main())
