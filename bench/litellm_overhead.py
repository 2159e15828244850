"""What LiteLLM's call path costs per request, next to draftgate's direct call (one shared aiohttp pool), in one run.

Both paths call the same simulated OpenAI-compatible upstream on 127.0.0.1, sequentially, alternating
in rounds so machine noise hits both alike. Prints per-request latency (p50/p99) and the ratio.

    python bench/litellm_overhead.py [--requests 400] [--out bench/results/litellm_overhead.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gateway.simulator import Simulator, SimulatorServer
from router.hosted import HostedModel
from router.litellm_transport import LiteLLMTransport
from router.transport import OpenAITransport

BODY = {"messages": [{"role": "user", "content": "hello from the benchmark"}], "max_tokens": 16}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(requests: int) -> dict[str, object]:
    async with SimulatorServer(Simulator(record=False)) as sim:
        model = HostedModel(alias="bench", model="openai/gpt-4o-mini", api_base=sim.base_url, api_key="sk-bench")
        direct, lite = OpenAITransport(), LiteLLMTransport()
        try:
            for _ in range(20):  # warm both: connection pools, imports, caches
                await direct.complete(model, BODY)
                await lite.complete(model, BODY)
            times: dict[str, list[float]] = {"direct": [], "litellm": []}
            for _ in range(requests // 20):
                for name, transport in (("direct", direct), ("litellm", lite)):
                    for _ in range(10):
                        started = time.perf_counter()
                        await transport.complete(model, BODY)
                        times[name].append((time.perf_counter() - started) * 1000)
        finally:
            await direct.aclose()
    summary = {name: {"n": len(v), "p50_ms": round(statistics.median(v), 3), "p99_ms": round(pct(v, 0.99), 3),
                      "mean_ms": round(statistics.fmean(v), 3)} for name, v in times.items()}
    d, lt = summary["direct"], summary["litellm"]
    return {
        "what": "per-request latency of one non-streaming call to a simulated upstream on 127.0.0.1",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "versions": {"litellm": version("litellm"), "aiohttp": version("aiohttp")},
        "results": summary,
        "litellm_over_direct_p50": round(lt["p50_ms"] / d["p50_ms"], 2),
        "litellm_extra_ms_p50": round(lt["p50_ms"] - d["p50_ms"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = asyncio.run(run(args.requests))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
