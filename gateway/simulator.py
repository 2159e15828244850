"""A simulated OpenAI-compatible provider on a raw asyncio socket, for tests, benchmarks and the demo.

Raw sockets (not an ASGI app) so faults a real provider shows can be injected exactly: HTTP errors
with `Retry-After`, stalls past a timeout, connection resets, and streams that stop halfway.
It answers deterministically: scripted replies first, else an echo of the last user message; `/embeddings`
with `embedding_vector`s. Asked for
`logprobs`, it returns them in vLLM's shape (one entry per streamed piece, `top_logprobs` alternatives).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import struct
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

import orjson


@dataclass
class Fault:
    """One injected failure, consumed by the next request that reaches the simulator."""

    status: int | None = None  # reply with this HTTP status and an OpenAI error body
    message: str = "simulated upstream failure"
    retry_after_s: float | str | None = None  # a string is sent as is (an HTTP date, or a value that is neither)
    delay_s: float = 0.0  # stall before answering (to trip client timeouts)
    broken_body: bool = False  # answer 200 with a body cut short (not JSON): the work was done, and billed
    trickle_s: float = 0.0  # a non-streaming answer sent in 10 pieces this far apart (never silent for long)
    reset: bool = False  # close the connection without a response
    break_stream_after: int | None = None  # stream this many content chunks, then drop the connection
    error_in_stream_after: int | None = None  # stream this many chunks, then send an error event
    end_stream_after: int | None = None  # stream this many chunks, then end the body cleanly, without [DONE]
    stall_stream_after: int | None = None  # stream this many chunks, then go silent for stall_s (then drop)
    stall_s: float = 30.0
    no_usage: bool = False  # answer without `usage` (in the body, or the stream's usage chunk)
    usage: Any = None  # this `usage` instead of the real one (body and usage chunk): an upstream's wrong figures
    malformed_chunk_after: int | None = None  # stream this many chunks, then one that is not JSON, then the rest
    code: str | None = None  # the error body's `code` and `param` with `status` (context_length_exceeded, ...)
    param: str | None = None
    padding_bytes: int = 0  # a non-streaming answer this much larger (an extra field): an upstream gone haywire
    body: bytes | None = None  # a non-streaming 200 with exactly this body (`{"choices": null}`, say)
    error_payload: bytes | None = None  # the error event `error_in_stream_after` sends, as this upstream words it
    no_finish_reason: bool = False  # a whole stream, `[DONE]` included, whose chunks never carry a finish_reason


@dataclass
class Received:
    """What the simulator saw: for assertions on relayed bodies and headers."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]


def _words(text: str) -> int:
    return len(text.split())


def _logprob(token: str, rank: int = 0) -> dict[str, Any]:
    """A made-up but repeatable candidate: rank 0 is the token sent, the others are alternatives."""
    token = token if rank == 0 else f"{token.strip()}~{rank}"
    return {"token": token, "logprob": -round(0.01 * (len(token) + 10 * rank), 4), "bytes": list(token.encode())}


EMBEDDING_DIMENSIONS = 8  # a vector's length when the request sets no `dimensions`


def embedding_vector(item: str | list[int], dims: int) -> list[float]:
    """A repeatable vector for one input, each value a multiple of 1/64 (exact as float32, so base64 round-trips)."""
    seed = zlib.crc32(orjson.dumps(item))
    return [((seed >> (i % 24)) + 7 * i) % 128 / 64 - 1 for i in range(dims)]


@dataclass
class Simulator:
    """State of one simulated provider: faults to inject, scripted replies, requests received."""

    faults: deque[Fault] = field(default_factory=deque)
    replies: deque[str] = field(default_factory=deque)
    received: list[Received] = field(default_factory=list)
    reply_fn: Callable[[dict[str, Any]], str] | None = None
    chunk_words: int = 1
    done_gap_s: float = 0.0  # pause between `data: [DONE]` and the end of the body, as a framework may leave
    record: bool = True
    healthy: bool = True  # what GET /health answers (vLLM's liveness: 500 once its engine is dead)
    # model -> reasoning tokens it spends before answering, as OpenAI's o-series and gpt-5 do: such a model refuses
    # `max_tokens` and a `temperature` other than 1 as OpenAI words it, and `max_completion_tokens` caps both
    reasoning_models: dict[str, int] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def reply_for(self, body: dict[str, Any]) -> str:
        if self.replies:
            return self.replies.popleft()
        if self.reply_fn is not None:
            return self.reply_fn(body)
        users = [m for m in body.get("messages", []) if m.get("role") == "user"]
        content = users[-1].get("content", "") if users else ""
        if isinstance(content, list):
            content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        return f"echo: {content}"

    def usage(self, body: dict[str, Any], reply: str) -> dict[str, int]:
        """Words as tokens; the prompt counted once and the reply once per choice (`n`), as OpenAI bills."""
        prompt = sum(_words(str(m.get("content") or "")) for m in body.get("messages", []))
        completion = _words(reply) * int(body.get("n") or 1)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def parts(self, reply: str) -> list[str]:
        """The pieces a reply is streamed in (`chunk_words` words each), which logprobs count as tokens."""
        words = reply.split(" ")
        parts = [" ".join(words[i:i + self.chunk_words]) for i in range(0, len(words), self.chunk_words)]
        return [p if i == 0 else " " + p for i, p in enumerate(parts)]

    def logprobs(self, body: dict[str, Any], parts: list[str]) -> dict[str, Any] | None:
        """vLLM's `logprobs` for these pieces when the request asked for them (vLLM has no `refusal` in it)."""
        if not body.get("logprobs"):
            return None
        top = int(body.get("top_logprobs") or 0)
        return {"content": [{**_logprob(p), "top_logprobs": [_logprob(p, rank) for rank in range(top)]}
                            for p in parts]}

    def refusal(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """OpenAI's 400 error for a parameter a reasoning model does not take; None when it takes them all."""
        if body.get("model") not in self.reasoning_models:
            return None
        if "max_tokens" in body:
            return {"message": "Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                               "'max_completion_tokens' instead.", "type": "invalid_request_error",
                    "param": "max_tokens", "code": "unsupported_parameter"}
        if body.get("temperature", 1) != 1:
            return {"message": f"Unsupported value: 'temperature' does not support {body['temperature']} with this "
                               "model. Only the default (1) value is supported.", "type": "invalid_request_error",
                    "param": "temperature", "code": "unsupported_value"}
        return None

    def completion(self, body: dict[str, Any], reply: str) -> dict[str, Any]:
        reasoning = self.reasoning_models.get(body.get("model", ""), 0)
        budget = body.get("max_completion_tokens")  # a reasoning model spends it on reasoning first
        cut = bool(reasoning) and budget is not None and reasoning + _words(reply) > budget
        reply = "" if cut else reply
        logprobs = self.logprobs(body, self.parts(reply))
        usage: dict[str, Any] = dict(self.usage(body, reply))
        if reasoning:
            usage = {**usage, "completion_tokens": usage["completion_tokens"] + reasoning,
                     "total_tokens": usage["total_tokens"] + reasoning,
                     "completion_tokens_details": {"reasoning_tokens": reasoning}}
        return {"id": f"chatcmpl-sim{next(self._ids)}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", "sim"), "system_fingerprint": "fp_sim",
                "choices": [{"index": i, "message": {"role": "assistant", "content": reply, "refusal": None},
                             "logprobs": logprobs, "finish_reason": "length" if cut else "stop"}
                            for i in range(int(body.get("n") or 1))],
                "usage": usage}

    def embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        """OpenAI's embeddings list: `embedding_vector` per input (base64 as float32 when asked), words or
        token ids as tokens."""
        value = body.get("input")
        items = [value] if isinstance(value, str) or (value and isinstance(value[0], int)) else list(value or [])
        dims = int(body.get("dimensions") or EMBEDDING_DIMENSIONS)
        vectors: list[list[float] | str] = [embedding_vector(item, dims) for item in items]
        if body.get("encoding_format") == "base64":
            vectors = [base64.b64encode(struct.pack(f"<{dims}f", *v)).decode() for v in vectors]
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        tokens = sum(_words(item) if isinstance(item, str) else len(item) for item in items)
        return {"object": "list", "data": data, "model": body.get("model", "sim"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    def chunks(self, body: dict[str, Any], reply: str) -> list[dict[str, Any]]:
        base = {"id": f"chatcmpl-sim{next(self._ids)}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": body.get("model", "sim"), "system_fingerprint": "fp_sim"}
        parts = self.parts(reply)
        out = []
        for index in range(int(body.get("n") or 1)):  # choice after choice, as `n` streams may interleave
            out += [{**base, "choices": [{"index": index, "delta": {"role": "assistant", "content": ""},
                                          "logprobs": None, "finish_reason": None}]}]
            out += [{**base, "choices": [{"index": index, "delta": {"content": p},
                                          "logprobs": self.logprobs(body, [p]), "finish_reason": None}]}
                    for p in parts]
            out.append({**base, "choices": [{"index": index, "delta": {}, "logprobs": None,
                                             "finish_reason": "stop"}]})
        options = body.get("stream_options") or {}
        if options.get("continuous_usage_stats"):  # vLLM's extension: the running usage in every chunk
            sent = ""
            for chunk in out:
                sent += chunk["choices"][0]["delta"].get("content") or ""
                chunk["usage"] = self.usage({**body, "n": 1}, sent)
        if options.get("include_usage"):
            out.append({**base, "choices": [], "usage": self.usage(body, reply)})
        return out


def _response(status: int, body: bytes, content_type: str = "application/json",
              extra: dict[str, str] | None = None) -> bytes:
    reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests",
              500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}.get(status, "Status")
    headers = {"content-type": content_type, "content-length": str(len(body))}
    headers.update(extra or {})
    head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return head.encode() + body


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
    return method, path, headers, body


class SimulatorServer:
    """Runs a Simulator on 127.0.0.1; `async with SimulatorServer() as sim: sim.base_url`."""

    def __init__(self, state: Simulator | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = state or Simulator()
        self._host, self._port = host, port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self.connections = 0  # TCP connections accepted: tests check that clients reuse them

    @property
    def base_url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://{self._host}:{port}/v1"

    async def start(self) -> SimulatorServer:
        self._server = await asyncio.start_server(self._handle, self._host, self._port, backlog=1024)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            for task in list(self._handlers):  # e.g. one stalling a stream on purpose
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            while (request := await _read_request(reader)) is not None:
                if not await self._serve(request, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            if task is not None:
                self._handlers.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _serve(self, request: tuple[str, str, dict[str, str], bytes], writer: asyncio.StreamWriter) -> bool:
        method, path, headers, raw = request
        if method == "GET" and path == "/health":
            writer.write(_response(200 if self.state.healthy else 500, b"{}"))
            return True
        if method == "GET" and path.endswith("/models"):
            writer.write(_response(200, b'{"object":"list","data":[{"id":"sim","object":"model"}]}'))
            return True
        body: dict[str, Any] = orjson.loads(raw) if raw else {}
        sim = self.state
        if sim.record:
            sim.received.append(Received(path, headers, body))
        fault = sim.faults.popleft() if sim.faults else Fault()
        if fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        if fault.reset:
            writer.transport.abort()
            return False
        if fault.status is not None:
            after = fault.retry_after_s
            extra = {} if after is None else {"retry-after": after if isinstance(after, str) else f"{after:g}"}
            err = {"error": {"message": fault.message, "type": "server_error" if fault.status >= 500 else
                             "invalid_request_error", "param": fault.param, "code": fault.code}}
            writer.write(_response(fault.status, orjson.dumps(err), extra=extra))
            return True
        embedding = path.endswith("/embeddings")
        if not embedding and (refusal := sim.refusal(body)) is not None:
            writer.write(_response(400, orjson.dumps({"error": refusal})))
            return True
        reply = "" if embedding else sim.reply_for(body)
        if embedding or not body.get("stream"):
            completion = sim.embeddings(body) if embedding else sim.completion(body, reply)
            if fault.no_usage:
                del completion["usage"]
            if fault.usage is not None:
                completion["usage"] = fault.usage
            if fault.padding_bytes:
                completion["padding"] = "x" * fault.padding_bytes
            sent = orjson.dumps(completion) if fault.body is None else fault.body
            response = _response(200, sent[:40] if fault.broken_body else sent)
            if fault.trickle_s:
                step = -(-len(response) // 10)
                for start in range(0, len(response), step):
                    writer.write(response[start:start + step])
                    await writer.drain()
                    await asyncio.sleep(fault.trickle_s)
                return True
            writer.write(response)
            await writer.drain()
            return True
        return await self._stream(body, reply, fault, writer)

    async def _stream(self, body: dict[str, Any], reply: str, fault: Fault, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
                     b"transfer-encoding: chunked\r\n\r\n")
        chunks = self.state.chunks(body, reply)
        if fault.no_usage:
            chunks = [c for c in chunks if "usage" not in c]
        if fault.usage is not None:
            chunks = [{**c, "usage": fault.usage} if "usage" in c else c for c in chunks]
        if fault.no_finish_reason:
            chunks = [{**c, "choices": [{**ch, "finish_reason": None} for ch in c["choices"]]} for c in chunks]
        for i, chunk in enumerate(chunks):
            if fault.malformed_chunk_after is not None and i == fault.malformed_chunk_after + 1:
                payload = b"data: {this is not json\n\n"
                writer.write(b"%x\r\n%s\r\n" % (len(payload), payload))
            if fault.break_stream_after is not None and i > fault.break_stream_after:
                await writer.drain()
                writer.transport.abort()
                return False
            if fault.end_stream_after is not None and i > fault.end_stream_after:
                break  # the body's end, as a proxy timing a response out may send it
            if fault.stall_stream_after is not None and i > fault.stall_stream_after:
                await writer.drain()
                await asyncio.sleep(fault.stall_s)  # alive but silent: only a read timeout notices
                writer.transport.abort()
                return False
            if fault.error_in_stream_after is not None and i > fault.error_in_stream_after:
                event = fault.error_payload or b'{"error":{"message":"' + fault.message.encode() + b'","type":"server_error"}}'
                payload = b"data: " + event + b"\n\n"
                writer.write(b"%x\r\n%s\r\n" % (len(payload), payload))
                break
            payload = b"data: " + orjson.dumps(chunk) + b"\n\n"
            writer.write(b"%x\r\n%s\r\n" % (len(payload), payload))
            await writer.drain()
        else:
            payload = b"data: [DONE]\n\n"
            writer.write(b"%x\r\n%s\r\n" % (len(payload), payload))
            if self.state.done_gap_s:
                await writer.drain()
                await asyncio.sleep(self.state.done_gap_s)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True
