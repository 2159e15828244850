"""The floor: a bare Starlette + httpx relay with no auth, routing, ledger or metrics.

    RELAY_UPSTREAM=http://127.0.0.1:8001/v1 uvicorn --app-dir bench/gateway_overhead relay:app
"""

from __future__ import annotations

import os

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

UPSTREAM = os.environ.get("RELAY_UPSTREAM", "http://127.0.0.1:8001/v1")
HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-upstream"}
client = httpx.AsyncClient(base_url=UPSTREAM, timeout=httpx.Timeout(60.0, connect=10.0),
                           limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200))


async def chat(request: Request) -> Response:
    upstream_request = client.build_request("POST", "/chat/completions", content=await request.body(),
                                            headers=HEADERS)
    upstream = await client.send(upstream_request, stream=True)
    media_type = upstream.headers.get("content-type", "application/json")
    if media_type.startswith("text/event-stream"):
        return StreamingResponse(upstream.aiter_raw(), status_code=upstream.status_code, media_type=media_type,
                                 background=BackgroundTask(upstream.aclose))
    content = await upstream.aread()
    await upstream.aclose()
    return Response(content, status_code=upstream.status_code, media_type=media_type)


async def healthz(_request: Request) -> Response:
    return PlainTextResponse("ok")


app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/healthz", healthz)])
