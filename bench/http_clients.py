"""HTTP client libraries for the hosted hot path, side by side in one run: the same keep-alive POSTs
to the fake upstream (bench/gateway_overhead/upstream.py) from one process on one core.

  httpx pooled  : httpx.AsyncClient sized like a gateway's (1,000 connections, 200 kept alive)
  httpx default : httpx.AsyncClient with its defaults (100 / 20)
  aiohttp       : aiohttp.ClientSession with a 1,000-connection TCPConnector (draftgate's transport)

    python bench/http_clients.py [--requests 4000] [--concurrency 32] [--out bench/results/http_clients.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
import uvloop

HERE = Path(__file__).resolve().parent
BODY = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
HEADERS = {"content-type": "application/json", "authorization": "Bearer x"}


async def _closed_loop(call: Any, requests: int, concurrency: int) -> float:
    async def worker(count: int) -> None:
        for _ in range(count):
            await call()

    await asyncio.gather(*(worker(50) for _ in range(concurrency)))  # warm the pool
    started = time.perf_counter()
    await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
    return requests // concurrency * concurrency / (time.perf_counter() - started)


async def with_httpx(url: str, limits: httpx.Limits, requests: int, concurrency: int) -> float:
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(60, connect=10)) as client:
        async def call() -> None:
            response = await client.post(url, content=BODY, headers=HEADERS)
            orjson.loads(response.content)

        return await _closed_loop(call, requests, concurrency)


async def with_aiohttp(url: str, requests: int, concurrency: int) -> float:
    connector = aiohttp.TCPConnector(limit=1000, limit_per_host=0, keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def call() -> None:
            async with session.post(url, data=BODY, headers=HEADERS, timeout=timeout) as response:
                orjson.loads(await response.read())

        return await _closed_loop(call, requests, concurrency)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cpus = sorted(os.sched_getaffinity(0))
    upstream_cmd = [sys.executable, str(HERE / "gateway_overhead" / "upstream.py"), "--port", str(port)]
    if len(cpus) > 1:
        upstream_cmd = ["taskset", "-c", str(cpus[-1]), *upstream_cmd]
        os.sched_setaffinity(0, {cpus[0]})  # the clients on one core, the upstream on another
    upstream = subprocess.Popen(upstream_cmd)
    try:
        time.sleep(1.5)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        rounds: list[dict[str, float]] = []

        async def one_round() -> dict[str, float]:
            return {
                "httpx_pooled": await with_httpx(url, httpx.Limits(max_connections=1000, max_keepalive_connections=200,
                                                                   keepalive_expiry=30), args.requests, args.concurrency),
                "httpx_default": await with_httpx(url, httpx.Limits(max_connections=100, max_keepalive_connections=20),
                                                  args.requests, args.concurrency),
                "aiohttp": await with_aiohttp(url, args.requests, args.concurrency),
            }

        for index in range(args.rounds):
            result = uvloop.run(one_round())
            rounds.append({k: round(v, 1) for k, v in result.items()})
            print(f"round {index}: " + "  ".join(f"{k} {v:,.0f} req/s" for k, v in rounds[-1].items()))
    finally:
        upstream.terminate()
        upstream.wait(10)
    medians = {k: sorted(r[k] for r in rounds)[len(rounds) // 2] for k in rounds[0]}
    out = {"what": f"req/s of keep-alive POSTs at concurrency {args.concurrency}, client process on one core",
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
           "versions": {name: version(name) for name in ("httpx", "httpcore", "aiohttp", "uvloop")},
           "rounds": rounds, "median_req_per_s": medians,
           "aiohttp_over_httpx_pooled": round(medians["aiohttp"] / medians["httpx_pooled"], 1),
           "aiohttp_over_httpx_default": round(medians["aiohttp"] / medians["httpx_default"], 1)}
    print(json.dumps(out, indent=2))
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
