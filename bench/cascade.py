"""The cascade end to end: a mixed workload through the real gateway, local drafts verified, hard
prompts hosted, and how many wrong local answers still reach the client (the leak rate).

Workload: held-out routine prompts from the tiny model's six task kinds (ground truth known) plus hard
prompts from ../shared/data/routellm (GSM8K and MMLU; RouteLLM data, Apache-2.0). The hosted side is
the local fake upstream (gateway/simulator.py): it replays the strong model's recorded GSM8K answer,
and for routine prompts that get escalated it returns the correct answer (a strong hosted model gets
these right); its price is gpt-4o-mini's from LiteLLM's map. Each `--thresholds` value is a fresh
gateway whose cascade rule escalates drafts whose max commit entropy exceeds it.

With `--system-share S`, that share of the routine requests comes after an app's system prompt, and
with `--history-share H` that share as the last turn of a conversation (1-3 earlier exchanges); both
held out like the prompts (`tasks.messages_for`), as apps send them (`cascade_system.json`: S 0.5;
`cascade_conversation.json`: S 0.5, H 0.5). With `--conversation-threshold C`, requests with an earlier
assistant turn get their own rule with max entropy C, matched by the policy's `messages.roles`
condition, while the others keep the swept threshold (`cascade_conversation_split.json`).

    python bench/cascade.py [--routine 120] [--hard 40] [--thresholds 0.02,0.1,0.5] [--system-share 0]
                            [--history-share 0] [--conversation-threshold C] [--out bench/results/cascade.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import uvicorn
from openai import AsyncOpenAI

from gateway.app import create_app
from gateway.demo import ROUTINE
from gateway.settings import Settings
from gateway.simulator import Simulator, SimulatorServer
from ledger import Database
from ledger.reports import Reporter, ReportQuery
from local_engine.training.tasks import HELD_OUT_SEED_BASE, KINDS, check, messages_for, sample

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "routellm"


def workload(routine: int, hard: int, seed: int = 5, system_share: float = 0.0,
             history_share: float = 0.0) -> list[dict[str, Any]]:
    """Routine jobs (a `system_share` of them after an app's system prompt, a `history_share` after 1-3
    earlier exchanges, held out like the prompts) and hard ones from the shared data, shuffled."""
    seeds = [HELD_OUT_SEED_BASE + 700_000 + i for i in range(routine)]
    jobs = [{"kind": kind, "prompt": prompt, "answer": answer, "hard": False,
             "messages": messages_for(s, prompt, system_share, history_share)}
            for s, (kind, prompt, answer) in zip(seeds, map(sample, seeds), strict=True)]
    rng = random.Random(seed)
    for source in ("gsm8k", "mmlu"):
        rows = [json.loads(line) for line in (DATA / f"{source}_dev.jsonl").read_text().split("\n") if line.strip()]
        for row in rng.sample(rows, hard // 2):
            jobs.append({"kind": source, "prompt": row["prompt"], "answer": row.get("strong_response"),
                         "strong_score": row["strong_score"], "hard": True,
                         "messages": [{"role": "user", "content": row["prompt"]}]})
    rng.shuffle(jobs)
    return jobs


def cascade_rule(name: str, when: str, threshold: float) -> str:
    """One policy rule (YAML, indented for `rules:`) drafting locally and escalating above `threshold`."""
    return f"""
    - name: {name}
      when: {when}
      action:
        cascade:
          escalate_to: gpt-4o-mini
          verifiers:
            - min_confidence: {{max_entropy: {threshold}, allow_step_cap: false}}"""


def config(sim_url: str, threshold: float, db: Path, conversation_threshold: float | None = None) -> str:
    """The gateway's config: one cascade rule for routine prompts; with `conversation_threshold`, a
    first rule keeps `threshold` for requests without an assistant turn (user, optionally a system
    prompt) and the second applies the stricter bound to conversations."""
    routine = f"content: {{regex: '{ROUTINE}|json|JSON', scope: last_user}}"
    rules = ""
    if conversation_threshold is not None:
        rules += cascade_rule("routine-single-turn", f"{{{routine}, messages: {{roles: [system, user]}}}}", threshold)
        threshold = conversation_threshold
    rules += cascade_rule("routine-tasks", f"{{{routine}}}", threshold)
    return f"""
database_url: "sqlite:///{db}"
reference_model: gpt-4o-mini
models:
  - name: gpt-4o-mini
    model: openai/gpt-4o-mini
    api_base: {sim_url}
    api_key: fake-upstream
policies:
  default: {{hosted: gpt-4o-mini}}
  rules:{rules}
"""


def upstream(jobs: list[dict[str, Any]]) -> Simulator:
    answers = {j["prompt"]: j["answer"] or "[replayed strong-model answer]" for j in jobs}

    def reply(body: dict[str, Any]) -> str:
        users = [m for m in body.get("messages", []) if m.get("role") == "user"]
        return answers.get(str(users[-1].get("content")) if users else "", "[replayed strong-model answer]")

    return Simulator(reply_fn=reply, record=False)


async def drive(url: str, jobs: list[dict[str, Any]], concurrency: int) -> list[dict[str, Any]]:
    client = AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)
    gate = asyncio.Semaphore(concurrency)

    async def one(job: dict[str, Any]) -> dict[str, Any]:
        async with gate:
            started = time.perf_counter()
            raw = await client.chat.completions.with_raw_response.create(
                model="auto", messages=job["messages"], max_tokens=64, temperature=0)
            text = raw.parse().choices[0].message.content or ""
            return {**job, "route": raw.headers["x-draftgate-route"], "text": text,
                    "latency_s": time.perf_counter() - started}

    results = await asyncio.gather(*(one(j) for j in jobs))
    await client.close()
    return list(results)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_once(jobs: list[dict[str, Any]], threshold: float, concurrency: int,
             conversation_threshold: float | None = None) -> dict[str, Any]:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    sim = SimulatorServer(upstream(jobs))
    asyncio.run_coroutine_threadsafe(sim.start(), loop).result(10)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "draftgate.yaml"
        cfg.write_text(config(sim.base_url, threshold, Path(tmp) / "ledger.db", conversation_threshold))
        server = uvicorn.Server(uvicorn.Config(create_app(Settings(config=cfg, data_dir=Path(tmp))),
                                               host="127.0.0.1", port=0, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            results = asyncio.run(drive(f"http://127.0.0.1:{port}", jobs, concurrency))
        finally:
            server.should_exit = True
            thread.join(30)
            asyncio.run_coroutine_threadsafe(sim.stop(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
        db = Database(f"sqlite:///{Path(tmp) / 'ledger.db'}")
        total = Reporter(db).report(ReportQuery(group_by="route")).total.as_dict()
        db.dispose()
    routine = [r for r in results if not r["hard"]]
    hard = [r for r in results if r["hard"]]
    local_routine = [r for r in routine if r["route"] == "local"]
    leaks = [r for r in local_routine if not check(r["text"], r["answer"])]
    hard_local = [r for r in hard if r["route"] == "local"]
    routine_correct = sum(check(r["text"], r["answer"]) for r in routine)
    def subset(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
        return None if not rows else {
            "n": len(rows), "served_locally": sum(r["route"] == "local" for r in rows) / len(rows),
            "leaked": sum(r["route"] == "local" and not check(r["text"], r["answer"]) for r in rows)}

    system_stats = subset([r for r in routine if r["messages"][0]["role"] == "system"])
    history_stats = subset([r for r in routine if any(m["role"] == "assistant" for m in r["messages"])])
    per_kind = {kind: {"n": len(rs), "local": sum(r["route"] == "local" for r in rs),
                       "leaked": sum(r["route"] == "local" and not check(r["text"], r["answer"]) for r in rs)}
                for kind in KINDS for rs in [[r for r in routine if r["kind"] == kind]]}
    latency = {route: {"p50_s": pct([r["latency_s"] for r in results if r["route"] == route], 0.5),
                       "p99_s": pct([r["latency_s"] for r in results if r["route"] == route], 0.99),
                       "n": sum(r["route"] == route for r in results)} for route in ("local", "hosted", "escalated")}
    return {
        "max_entropy_threshold": threshold, "conversation_max_entropy_threshold": conversation_threshold,
        "requests": len(results),
        "routine_served_locally": len(local_routine) / len(routine),
        "leak_rate": (len(leaks) + len(hard_local)) / len(results),
        "routine_leak_rate": len(leaks) / len(routine),
        "routine_escalated": sum(r["route"] == "escalated" for r in routine) / len(routine),
        "routine_answered_correctly": routine_correct / len(routine),
        "hard_sent_hosted": sum(r["route"] != "local" for r in hard) / max(1, len(hard)),
        "hard_strong_model_accuracy": statistics.mean(r["strong_score"] for r in hard) if hard else None,
        "cost_usd": total["cost_usd"], "all_hosted_usd": total["all_hosted_usd"],
        "cost_vs_all_hosted": total["cost_usd"] / total["all_hosted_usd"] if total["all_hosted_usd"] else None,
        "wasted_draft_usd": total["wasted_draft_usd"], "latency_by_route": latency, "per_kind": per_kind,
        "routine_after_a_system_prompt": system_stats, "routine_in_a_conversation": history_stats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--routine", type=int, default=120)
    parser.add_argument("--hard", type=int, default=40)
    parser.add_argument("--thresholds", default="0.02,0.1,0.5")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--system-share", type=float, default=0.0,
                        help="share of routine requests sent after an app's system prompt")
    parser.add_argument("--history-share", type=float, default=0.0,
                        help="share of routine requests sent as the last turn of a conversation")
    parser.add_argument("--conversation-threshold", type=float, default=None,
                        help="a stricter max entropy for requests with an earlier assistant turn (a second rule)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    jobs = workload(args.routine, args.hard, system_share=args.system_share, history_share=args.history_share)
    runs = []
    print(f"{'max_entropy':>11} {'routine local':>13} {'leak rate':>9} {'routine leak':>12} {'escalated':>9} "
          f"{'correct':>7} {'hard hosted':>11} {'cost/all-hosted':>15}")
    for threshold in (float(t) for t in args.thresholds.split(",")):
        r = run_once(jobs, threshold, args.concurrency, args.conversation_threshold)
        runs.append(r)
        print(f"{threshold:>11} {r['routine_served_locally']:>13.1%} {r['leak_rate']:>9.1%} "
              f"{r['routine_leak_rate']:>12.1%} {r['routine_escalated']:>9.1%} {r['routine_answered_correctly']:>7.1%} "
              f"{r['hard_sent_hosted']:>11.1%} {r['cost_vs_all_hosted']:>15.2f}")
    out = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "routine": args.routine, "hard": args.hard,
           "system_share": args.system_share, "history_share": args.history_share,
           "conversation_threshold": args.conversation_threshold,
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
           "targets": {"routine_served_locally": ">= 0.60", "leak_rate": "< 0.01", "hard": "escalated"},
           "runs": runs}
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
