"""The sequential (concurrency 1) client: per-request latency and streaming time-to-first-token.

A raw asyncio HTTP/1.1 keep-alive client (no httpx, no aiohttp) so its own cost per request stays
small and, more to the point, identical for every target: the "added latency" figures subtract the
direct-to-upstream latency measured the same way. Every answer is checked (status 200, a completion
with choices; for streams a content delta, the usage chunk and `[DONE]`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import orjson


class BadResponse(Exception):
    """The target answered, but not with a valid completion."""


@dataclass
class Sample:
    """One request: total latency, and for streams the time until the first content delta."""

    total_ms: float
    ttft_ms: float | None = None


@dataclass
class Series:
    """Samples and failures of one target in one mode."""

    samples: list[Sample] = field(default_factory=list)
    errors: int = 0
    first_error: str | None = None


class Connection:
    """One keep-alive connection to host:port."""

    def __init__(self, host: str, port: int, key: str) -> None:
        self.host, self.port, self.key = host, port, key
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.reader is None or self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        return self.reader, self.writer

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None

    async def chat(self, path: str, body: bytes, stream: bool) -> Sample:
        """Sends one request and reads the whole answer; raises BadResponse on anything but a good one."""
        reader, writer = await self._connect()
        head = (f"POST {path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\ncontent-type: application/json\r\n"
                f"authorization: Bearer {self.key}\r\ncontent-length: {len(body)}\r\n\r\n").encode()
        started = time.perf_counter()
        writer.write(head + body)
        status_line = await reader.readline()
        status = int(status_line.split(b" ", 2)[1]) if status_line else 0
        length, chunked = -1, False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value.strip())
            elif name == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
        if not chunked:
            payload = await reader.readexactly(length) if length >= 0 else await reader.read()
            total_ms = (time.perf_counter() - started) * 1000
            if status != 200 or b'"choices"' not in payload:
                raise BadResponse(f"HTTP {status}: {payload[:200]!r}")
            if length < 0:
                await self.close()
            if stream:
                raise BadResponse("expected a stream, got a plain body")
            return Sample(total_ms)
        ttft_ms, text, pending = None, b"", b""
        while True:
            size = int((await reader.readline()).strip().split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                break
            pending += data[:-2]
            if ttft_ms is None:
                ttft_ms = _first_content_ms(pending, started)
            text += data[:-2]
        total_ms = (time.perf_counter() - started) * 1000
        _check_stream(status, text)
        return Sample(total_ms, ttft_ms)


def _first_content_ms(buffer: bytes, started: float) -> float | None:
    """Milliseconds since `started` if `buffer` already holds an SSE event with a non-empty content delta."""
    for event in buffer.split(b"\n\n"):
        if not event.startswith(b"data: {"):
            continue
        try:
            chunk = orjson.loads(event[6:])
        except orjson.JSONDecodeError:
            continue  # an event cut across reads; the next read completes it
        for choice in chunk.get("choices") or []:
            if (choice.get("delta") or {}).get("content"):
                return (time.perf_counter() - started) * 1000
    return None


def _check_stream(status: int, text: bytes) -> None:
    if status != 200:
        raise BadResponse(f"HTTP {status}: {text[:200]!r}")
    if not text.rstrip().endswith(b"data: [DONE]"):
        raise BadResponse(f"stream did not end with [DONE]: {text[-200:]!r}")
    if b'"usage"' not in text or b'"error"' in text:
        raise BadResponse(f"stream without a usage chunk, or with an error event: {text[-300:]!r}")


async def sequential(conn: Connection, path: str, body: bytes, stream: bool, count: int, series: Series,
                     timeout_s: float = 10.0) -> None:
    """`count` requests one after another on one connection, appended to `series`."""
    for _ in range(count):
        try:
            series.samples.append(await asyncio.wait_for(conn.chat(path, body, stream), timeout_s))
        except (TimeoutError, BadResponse, OSError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
            series.errors += 1
            series.first_error = series.first_error or f"{type(exc).__name__}: {exc}"[:300]
            await conn.close()


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]
