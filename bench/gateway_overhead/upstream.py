"""A fake OpenAI-compatible upstream, as cheap per request as Python allows: one asyncio Protocol on uvloop.

No framework and no HTTP library: it parses just enough HTTP/1.1 (request line, Content-Length,
keep-alive) to answer `POST .../chat/completions` with a fixed completion, or with an SSE stream
(a role chunk, one chunk per word, a finish chunk, a final usage chunk when asked, `[DONE]`), each
event its own chunked-encoding write. `GET /health` answers 200. It is the same for every path
under test, so whatever it costs is in the direct baseline too.

    python bench/gateway_overhead/upstream.py --port 8001
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time

import orjson

REPLY_WORDS = ("Hello", " from", " the", " fake", " upstream", ",", " nice", " day.")
PROMPT_TOKENS = 14
_ids = itertools.count()


def _completion(model: str) -> bytes:
    return orjson.dumps({
        "id": f"chatcmpl-fake{next(_ids)}", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(REPLY_WORDS)},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": len(REPLY_WORDS),
                  "total_tokens": PROMPT_TOKENS + len(REPLY_WORDS)},
    })


def _stream_events(model: str, include_usage: bool) -> list[bytes]:
    """SSE events, each `data: ...\\n\\n`; OpenAI's chunk shape."""
    head = {"id": f"chatcmpl-fake{next(_ids)}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model}

    def chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
        body = {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return b"data: " + orjson.dumps(body) + b"\n\n"

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": word}) for word in REPLY_WORDS]
    events.append(chunk({}, "stop"))
    if include_usage:
        usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": len(REPLY_WORDS),
                 "total_tokens": PROMPT_TOKENS + len(REPLY_WORDS)}
        events.append(b"data: " + orjson.dumps({**head, "choices": [], "usage": usage}) + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


class UpstreamProtocol(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            lines = head.split("\r\n")
            length, close = 0, False
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value.strip())
                elif name == "connection" and value.strip().lower() == "close":
                    close = True
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4:end + 4 + length]
            self.buffer = self.buffer[end + 4 + length:]
            self._answer(lines[0].split(" "), body)
            if close and self.transport is not None:
                self.transport.close()
                return

    def _answer(self, request_line: list[str], body: bytes) -> None:
        transport = self.transport
        assert transport is not None
        method, path = request_line[0], request_line[1] if len(request_line) > 1 else "/"
        if method == "GET" and path == "/health":
            transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok")
            return
        if method != "POST" or not path.endswith("/chat/completions"):
            transport.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
            return
        try:
            request = orjson.loads(body)
            model = str(request.get("model") or "fake")
        except (orjson.JSONDecodeError, AttributeError):
            transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            return
        if not request.get("stream"):
            payload = _completion(model)
            transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                            + str(len(payload)).encode() + b"\r\n\r\n" + payload)
            return
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
                        b"transfer-encoding: chunked\r\n\r\n")
        for event in _stream_events(model, include_usage):
            transport.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
        transport.write(b"0\r\n\r\n")


async def serve(host: str, port: int) -> None:
    """Serves until cancelled."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(UpstreamProtocol, host, port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(serve(args.host, args.port))
    except ImportError:
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
