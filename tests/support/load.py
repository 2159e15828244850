"""A bounded load generator on the official openai SDK: N concurrent clients for a fixed time.

Every reply is checked (the simulator echoes the prompt; the bundled model's answer to a routine prompt is
known), so "no error" means right answers, not just 200s. Used by the load and kill -9 tests and by
bench/soak.py.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import openai

LOCAL_ALIAS = "local/diffusiongemma"
LOCAL_PROMPT = 'Extract city as JSON: {"name": "Ada", "age": 36, "city": "Oslo"}'
LOCAL_ANSWER = '{"city": "Oslo"}'
KINDS = ("hosted", "hosted_stream", "local", "local_stream")


@dataclass(frozen=True)
class Reply:
    """One request as the client saw it. `complete` = the whole response arrived and was right."""

    kind: str
    request_id: str | None
    complete: bool
    error: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float = 0.0
    finished_s: float = field(default_factory=time.monotonic)  # when the client got it or gave up


@dataclass
class LoadResult:
    """Everything a bounded run saw."""

    replies: list[Reply] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def completed(self) -> list[Reply]:
        return [r for r in self.replies if r.complete]

    @property
    def errors(self) -> Counter[str]:
        return Counter(f"{r.kind}: {r.error}" for r in self.replies if not r.complete)

    def summary(self) -> str:
        by_kind = Counter(r.kind for r in self.completed)
        latencies = sorted(r.latency_s for r in self.completed) or [0.0]
        p50 = latencies[len(latencies) // 2]
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        return (f"{len(self.completed)} ok / {len(self.replies)} sent in {self.duration_s:.1f}s "
                f"({len(self.completed) / max(self.duration_s, 1e-9):.0f} req/s), p50 {p50 * 1000:.0f} ms, "
                f"p99 {p99 * 1000:.0f} ms, by kind {dict(by_kind)}, errors {dict(self.errors)}")


async def _one(client: openai.AsyncOpenAI, kind: str, n: int) -> Reply:
    started = time.perf_counter()
    if kind.startswith("local"):
        model, prompt, expected = LOCAL_ALIAS, LOCAL_PROMPT, LOCAL_ANSWER
    else:
        model, prompt = "gpt-4o-mini", f"load request {n} says hello"
        expected = "echo: " + prompt
    messages = [{"role": "user", "content": prompt}]
    rid: str | None = None
    try:
        if kind.endswith("stream"):
            async with client.chat.completions.with_streaming_response.create(
                    model=model, messages=messages, stream=True, seed=0,  # type: ignore[arg-type]
                    stream_options={"include_usage": True}) as response:
                rid = response.headers.get("x-draftgate-request-id")
                text, usage = [], None
                async for chunk in await response.parse():
                    text += [c.delta.content or "" for c in chunk.choices]
                    usage = chunk.usage or usage
            # the SDK returns at `data: [DONE]`: for the client, that is a complete answer
            got, prompt_tokens = "".join(text), usage.prompt_tokens if usage else None
            completion_tokens = usage.completion_tokens if usage else None
        else:
            raw = await client.chat.completions.with_raw_response.create(
                model=model, messages=messages, seed=0)  # type: ignore[arg-type]
            rid = raw.headers.get("x-draftgate-request-id")
            completion = raw.parse()
            got = completion.choices[0].message.content or ""
            prompt_tokens = completion.usage.prompt_tokens if completion.usage else None
            completion_tokens = completion.usage.completion_tokens if completion.usage else None
    except (openai.APIError, httpx.HTTPError, OSError) as exc:
        cause = exc.__cause__ or exc.__context__
        detail = f" ({type(cause).__name__}: {str(cause)[:80]})" if cause is not None else ""
        return Reply(kind, rid, False, f"{type(exc).__name__}: {str(exc)[:120]}{detail}",
                     latency_s=time.perf_counter() - started)
    if got != expected:
        return Reply(kind, rid, False, f"wrong answer {got[:60]!r}", latency_s=time.perf_counter() - started)
    return Reply(kind, rid, True, None, prompt_tokens, completion_tokens, time.perf_counter() - started)


async def run_load(base_url: str, api_key: str, *, concurrency: int, duration_s: float,
                   kinds: dict[str, int], stop: asyncio.Event | None = None,
                   max_requests: int = 1_000_000, result: LoadResult | None = None) -> LoadResult:
    """`concurrency` clients loop until `duration_s` passes, `stop` is set or `max_requests` were sent.

    `kinds` gives how many of the clients send each kind (the rest send "hosted"). Pass `result` to
    watch replies arrive while the load runs.
    """
    result = result if result is not None else LoadResult()
    stop = stop or asyncio.Event()
    counter = itertools.count()
    plan = [k for k, count in kinds.items() for _ in range(count)]
    plan += ["hosted"] * (concurrency - len(plan))
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(60.0, connect=10.0)) as http:
        client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, http_client=http)
        deadline = time.monotonic() + duration_s

        async def worker(kind: str) -> None:
            while not stop.is_set() and time.monotonic() < deadline:
                n = next(counter)
                if n >= max_requests:
                    return
                result.replies.append(await _one(client, kind, n))

        started = time.monotonic()
        await asyncio.gather(*(worker(kind) for kind in plan))
        result.duration_s = time.monotonic() - started
    return result
