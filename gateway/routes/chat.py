"""OpenAI-compatible chat completions and model listing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from gateway.deps import PrincipalDep, ServicesDep
from gateway.pipeline import SHUTDOWN_REASON
from gateway.schemas import ChatRequest
from gateway.services import Services
from router import CHAT, UnknownModelError

router = APIRouter()
T = TypeVar("T")
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


@router.post("/v1/chat/completions")
@router.post("/chat/completions", include_in_schema=False)
async def chat_completions(body: ChatRequest, request: Request, principal: PrincipalDep) -> Response:
    """Serves a chat completion from the route the policy picks; SSE when `stream` is true."""
    return await served(body, request, principal)


async def served(body: ChatRequest, request: Request, principal: PrincipalDep, endpoint: str = CHAT,
                 as_json: Callable[[dict[str, Any]], dict[str, Any]] = lambda answer: answer,
                 as_events: Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]] = lambda events: events,
                 ) -> Response:
    """A chat request through the pipeline, its answer rendered by `as_json` / `as_events` (the identity for
    chat; another endpoint served as chat, such as legacy completions, renders its own shape)."""
    # app.state, not ServicesDep: FastAPI runs the sync `get_services` dependency in its thread pool, a
    # thread hop per request that bench/gateway_overhead's profile showed on the hot path.
    services: Services = request.app.state.services
    assert services.pipeline is not None
    headers_out = request.state.draftgate_headers
    if body.stream:  # until its first byte (a queued stream waits here); then the SSE response watches
        opened = await unless_disconnected(request, services.pipeline.stream(
            body, principal, request.state.request_id, headers_out, endpoint))
        if opened is None:
            return Response(status_code=499)
        chunks, headers = opened
        # no-cache and x-accel-buffering: a proxy in front (nginx buffers by default) would otherwise hold the
        # events back and hand the client the whole answer at once
        return StreamingResponse(as_events(chunks), media_type="text/event-stream",
                                 headers={**headers, **SSE_HEADERS})
    result = await unless_disconnected(request, services.pipeline.complete(
        body, principal, request.state.request_id, headers_out, endpoint))
    if result is None:
        return Response(status_code=499)  # nobody reads it; its row says cancelled
    answer, headers = result
    return Response(orjson.dumps(as_json(answer)), media_type="application/json", headers=headers)


async def unless_disconnected(request: Request, work: Coroutine[Any, Any, T]) -> T | None:
    """The work's result, or None when the client closed the connection first: the work is then cancelled
    (its row says cancelled, charged what it used), so a client that timed out stops costing engine time,
    as vLLM's servers do."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # not the client: the server cancels what outlasted its shutdown timeout
        task.cancel(SHUTDOWN_REASON)
        await asyncio.gather(task, return_exceptions=True)  # recorded (cancelled, what it spent) before stopping
        raise
    finally:
        gone.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)  # its row is recorded; nobody is left to tell
    return None


async def _disconnected(request: Request) -> None:
    """Returns when the client closes the connection (the body is already read: only a disconnect comes)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _model(services: Services, alias: str, created: int) -> dict[str, object]:
    card: dict[str, object] = {"id": alias, "object": "model", "created": created, "owned_by": "draftgate"}
    local = services.local
    if alias == services.config.local.alias and local is not None and local.context_length:
        card["max_model_len"] = local.context_length  # as vLLM's model cards say it
    return card


@router.get("/v1/models")
@router.get("/models", include_in_schema=False)
async def list_models(services: ServicesDep, principal: PrincipalDep) -> Response:
    """Every alias this caller may send as `model`."""
    created = int(time.time())
    data = [_model(services, alias, created) for alias in services.aliases() if principal.may_use(alias)]
    return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")


@router.get("/v1/models/{model:path}")
@router.get("/models/{model:path}", include_in_schema=False)
async def retrieve_model(model: str, services: ServicesDep, principal: PrincipalDep) -> Response:
    """One alias (`client.models.retrieve`); aliases may hold a slash (`local/diffusiongemma`)."""
    if not model:  # GET /v1/models/ is the list, not a model named ""
        return await list_models(services, principal)
    if model not in services.aliases():
        raise UnknownModelError(model)
    principal.check_model(model)
    return Response(orjson.dumps(_model(services, model, int(time.time()))), media_type="application/json")
