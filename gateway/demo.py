"""`draftgate demo`: the gateway on the bundled local model and a SIMULATED hosted provider.

Nothing leaves the machine: the "hosted" models are the in-process simulator (gateway/simulator.py)
priced like the real ones from LiteLLM's map, so the report's savings show what routing does to a
mixed workload: routine tasks drafted and verified locally, hard prompts sent hosted.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from gateway.app import create_app
from gateway.settings import Settings
from gateway.simulator import Simulator, SimulatorServer
from local_engine.training.tasks import HELD_OUT_SEED_BASE, OUT_OF_DISTRIBUTION, sample

ROUTINE = r"(?i)^(sort|order|convert|reformat|write \d|spell|sentiment|classify|camelcase|uppercase|what is \d|compute|\d+ (plus|minus))"


def demo_config(sim_url: str, master: str, db_path: Path) -> str:
    return f"""# written by `draftgate demo`; the hosted models are a local SIMULATOR, not real APIs
master_key: {master}
database_url: "sqlite:///{db_path}"
reference_model: gpt-4o
models:
  - name: gpt-4o
    model: openai/gpt-4o
    api_base: {sim_url}
    api_key: simulated-no-real-key
  - name: gpt-4o-mini
    model: openai/gpt-4o-mini
    api_base: {sim_url}
    api_key: simulated-no-real-key
teams:
  - name: research
  - name: support
keys:
  - name: research-bot
    key: sk-demo-research-0001
    team: research
  - name: support-bot
    key: sk-demo-support-0002
    team: support
policies:
  default: {{hosted: gpt-4o}}
  rules:
    - name: json-extraction
      when: {{content: {{regex: "(?i)json"}}}}
      action:
        cascade:
          escalate_to: gpt-4o-mini
          verifiers:
            - json: {{}}
            - min_confidence: {{max_entropy: 0.02}}  # bench/results/cascade.json: 0.0% leak at 0.02, 4.4% at 0.1
    - name: routine-tasks
      when: {{content: {{regex: '{ROUTINE}', scope: last_user}}}}
      action:
        cascade:
          escalate_to: gpt-4o-mini
          verifiers:
            - min_confidence: {{max_entropy: 0.02, allow_step_cap: false}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Running:
    url: str
    master: str
    stop: Callable[[], None]


def start(data_dir: Path, port: int | None = None) -> Running:
    """Starts the simulator and the gateway on 127.0.0.1, each on its own thread."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True, name="simulator").start()
    simulator = SimulatorServer(Simulator(record=False, reply_fn=lambda body: "[simulated hosted answer] " + " ".join(
        ["ok"] * random.randint(20, 120))))
    asyncio.run_coroutine_threadsafe(simulator.start(), loop).result(10)
    master = "sk-demo-master-" + secrets.token_hex(8)
    config = data_dir / "draftgate-demo.yaml"
    config.write_text(demo_config(simulator.base_url, master, data_dir / "ledger.db"))
    settings = Settings(config=config, data_dir=data_dir)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port or _free_port(),
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True, name="gateway")
    thread.start()
    deadline = time.monotonic() + 300
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the demo gateway did not start on port {server.config.port} (is it taken?)")
        time.sleep(0.05)

    def stop() -> None:
        server.should_exit = True
        thread.join(30)
        asyncio.run_coroutine_threadsafe(simulator.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)

    return Running(f"http://127.0.0.1:{server.config.port}", master, stop)


# Look routine to the policy, but are beyond what the tiny model was trained on: its confidence
# signals should say so and the verifier escalates them.
TRICKY = ["Sort ascending: banana, apple, cherry, fig", "What is 1234 * 5678?",
          "Convert the_quick_brown_fox_jumps_over to camelCase.", "Compute 17% of 2,340.",
          "Sentiment (positive/negative/neutral): The plot dragged but the ending redeemed it, mostly."]


def workload(count: int, seed: int = 0) -> list[dict[str, Any]]:
    """Mostly routine task prompts (held-out, never trained on), some hard ones, a few streamed."""
    rng = random.Random(seed)
    jobs = []
    for i in range(count):
        draw = rng.random()
        if draw < 0.2:
            prompt = rng.choice(OUT_OF_DISTRIBUTION)
        elif draw < 0.35:
            prompt = rng.choice(TRICKY)
        else:
            prompt = sample(HELD_OUT_SEED_BASE + 500_000 + i)[1]
        key = "sk-demo-research-0001" if rng.random() < 0.6 else "sk-demo-support-0002"
        jobs.append({"prompt": prompt, "key": key, "stream": rng.random() < 0.15})
    return jobs


async def send(url: str, jobs: list[dict[str, Any]], console: Console, concurrency: int = 4) -> dict[str, int]:
    clients = {key: AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)
               for key in {job["key"] for job in jobs}}
    routes: dict[str, int] = {}
    gate = asyncio.Semaphore(concurrency)
    columns = (TextColumn("sending"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[routes]}"))
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("demo", total=len(jobs), routes="")

        async def one(job: dict[str, Any]) -> None:
            async with gate:
                client = clients[job["key"]]
                messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": job["prompt"]}]
                try:
                    if job["stream"]:
                        streamed = await client.chat.completions.with_raw_response.create(
                            model="auto", messages=messages, stream=True, max_tokens=64)
                        async for _ in streamed.parse():
                            pass
                        route = streamed.headers.get("x-draftgate-route", "?")
                    else:
                        raw = await client.chat.completions.with_raw_response.create(
                            model="auto", messages=messages, max_tokens=64)
                        route = raw.headers.get("x-draftgate-route", "?")
                except Exception as exc:  # noqa: BLE001 - the demo reports failures, it does not stop
                    route = f"error ({type(exc).__name__})"
                routes[route] = routes.get(route, 0) + 1
                progress.update(task, advance=1, routes="  ".join(f"{k}: {v}" for k, v in sorted(routes.items())))

        await asyncio.gather(*(one(job) for job in jobs))
    for client in clients.values():
        await client.close()
    return routes
