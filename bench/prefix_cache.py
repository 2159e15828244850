"""Prompt-prefix KV reuse in the engine: the same workload with the prefix cache off and on, side by side.

Workloads (held-out task-family requests, closed loop, seeded so both settings draw the same numbers):
  shared-c1 / shared-c8: every request carries the same long system prompt, at concurrency 1 and 8
  unique-c8: every request has its own system prompt (a prefix that never comes back: the cache must
             not make this slower, which is why a prefix is cached on its second sighting only)
Each (workload, setting) runs in a fresh process; the rounds alternate off/on so drift on this noisy
machine hits both. Prints requests/s, p50/p99 latency, prompt tokens encoded, encoder passes, whether
the answers are the same with the cache on as off, and the on/off ratios (median over rounds).

The bundled tiny model was trained with system prompts too, but not this one (accuracy is printed for
both settings). What this measures is the cost of the prompt pass, which does not depend on the answers
being right; the answers must be identical on and off.

    python bench/prefix_cache.py [--requests 48] [--system-chars 600] [--rounds 3] [--out bench/results/prefix_cache.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from local_engine.engine import DiffusionEngine
from local_engine.interface import EngineConfig, GenerationRequest
from local_engine.loading import load_model
from local_engine.training.evaluate import held_out
from local_engine.training.tasks import check

POLICY = ("You are the assistant of the ACME finance team. Answer with the result only: no greeting, no "
          "explanation, no markdown. Dates follow the format asked for; numbers use digits; JSON is compact. "
          "If a request is outside routine data clean-up, say so in one line. ")
WORKLOADS = {"shared-c1": ("shared", 1), "shared-c8": ("shared", 8), "unique-c8": ("unique", 8)}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def system_prompt(chars: int, request: int | None) -> str:
    """The shared policy text repeated to `chars`; a per-request tag up front makes it unique."""
    text = (f"Ticket {request:05d}. " if request is not None else "") + POLICY
    return (text * (chars // len(text) + 1))[:chars]


async def run(workload: str, cached: bool, requests: int, system_chars: int, threads: int) -> dict[str, Any]:
    kind, concurrency = WORKLOADS[workload]
    torch.set_num_threads(threads)
    config = EngineConfig(max_batch_size=concurrency, max_queue=1024, max_tokens=32, threads=threads,
                          prefix_cache_tokens=32_768 if cached else 0)
    engine = DiffusionEngine(load_model(config), config)
    work = held_out(requests // 6 + 1)[:requests]

    def messages(i: int, prompt: str) -> list[dict[str, str]]:
        system = system_prompt(system_chars, i if kind == "unique" else None)
        return [{"role": "system", "content": system}, {"role": "user", "content": prompt}]

    await engine.start()
    # Untimed warm-up on the engine's thread, with a prompt no request shares (it caches nothing).
    await engine.generate(GenerationRequest("warm-up", [{"role": "user", "content": work[0][1]}], seed=0))
    pending = list(enumerate(work))
    answers, latencies, encoded, reused = [""] * len(work), [], 0, 0

    async def client() -> None:
        nonlocal encoded, reused
        while pending:
            i, (_, prompt, _) = pending.pop(0)
            t = time.perf_counter()
            c = await engine.generate(GenerationRequest(f"r{i}", messages(i, prompt), seed=i))
            latencies.append(time.perf_counter() - t)
            answers[i] = c.text
            encoded += c.prompt_tokens - c.cached_tokens
            reused += c.cached_tokens

    passes_before = engine.stats.encoder_passes
    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    await engine.stop()
    return {"workload": workload, "prefix_cache": cached, "requests": len(work), "wall_s": round(wall, 3),
            "requests_per_s": round(len(work) / wall, 2), "p50_latency_s": round(pct(latencies, 0.5), 4),
            "p99_latency_s": round(pct(latencies, 0.99), 4), "prompt_tokens_encoded": encoded,
            "prompt_tokens_reused": reused, "encoder_passes": engine.stats.encoder_passes - passes_before,
            "prefixes_stored": engine.prefixes.stats.stored,
            "accuracy": round(sum(check(a, w[2]) for a, w in zip(answers, work, strict=True)) / len(work), 4),
            "answers": answers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--system-chars", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--one", nargs=2, metavar=("WORKLOAD", "CACHED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(asyncio.run(run(args.one[0], args.one[1] == "on", args.requests, args.system_chars,
                                         args.threads))))
        return
    load_at_start = os.getloadavg()[0]
    runs: dict[str, list[dict[str, Any]]] = {f"{w}/{s}": [] for w in WORKLOADS for s in ("off", "on")}
    for round_no in range(args.rounds):
        for workload in WORKLOADS:
            for setting in (("off", "on") if round_no % 2 == 0 else ("on", "off")):
                out = subprocess.run([sys.executable, __file__, "--one", workload, setting, "--requests",
                                      str(args.requests), "--system-chars", str(args.system_chars),
                                      "--threads", str(args.threads)], capture_output=True, text=True, check=True)
                result = json.loads(out.stdout.strip().splitlines()[-1])
                runs[f"{workload}/{setting}"].append(result)
                print(json.dumps({k: v for k, v in result.items() if k != "answers"}), flush=True)
    summary = {}
    for workload in WORKLOADS:
        off, on = runs[f"{workload}/off"], runs[f"{workload}/on"]
        pairs = list(zip(off, on, strict=True))
        summary[workload] = {
            "throughput_on_over_off": round(statistics.median(b["requests_per_s"] / a["requests_per_s"]
                                                              for a, b in pairs), 2),
            "p50_latency_on_over_off": round(statistics.median(b["p50_latency_s"] / a["p50_latency_s"]
                                                               for a, b in pairs), 2),
            "p99_latency_on_over_off": round(statistics.median(b["p99_latency_s"] / a["p99_latency_s"]
                                                               for a, b in pairs), 2),
            "prompt_tokens_encoded": {"off": off[0]["prompt_tokens_encoded"], "on": on[0]["prompt_tokens_encoded"]},
            "encoder_passes": {"off": off[0]["encoder_passes"], "on": on[0]["encoder_passes"]},
            "same_answers_on_and_off": sum(a == b for x, y in pairs for a, b in zip(x["answers"], y["answers"],
                                                                                      strict=True))
                                       / sum(len(x["answers"]) for x, _ in pairs),
            "accuracy": {"off": off[0]["accuracy"], "on": on[0]["accuracy"]},
        }
    print(json.dumps(summary, indent=1))
    if args.out:
        for results in runs.values():
            for r in results:
                r.pop("answers")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
            "requests": args.requests, "system_chars": args.system_chars, "rounds": args.rounds,
            "torch_threads": args.threads, "load_average_1min": {"start": load_at_start, "end": os.getloadavg()[0]},
            "method": "each (workload, setting) in a fresh process; rounds alternate the order of off and on",
            "summary": summary, "runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
