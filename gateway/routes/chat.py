"""OpenAI-compatible chat completions and model listing."""

from __future__ import annotations

import time

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from gateway.deps import PrincipalDep, ServicesDep
from gateway.schemas import ChatRequest
from gateway.services import Services
from router import UnknownModelError

router = APIRouter()


@router.post("/v1/chat/completions")
@router.post("/chat/completions", include_in_schema=False)
async def chat_completions(body: ChatRequest, request: Request, principal: PrincipalDep) -> Response:
    """Serves a chat completion from the route the policy picks; SSE when `stream` is true."""
    # app.state, not ServicesDep: FastAPI runs the sync `get_services` dependency in its thread pool, a
    # thread hop per request that bench/gateway_overhead's profile showed on the hot path.
    services: Services = request.app.state.services
    assert services.pipeline is not None
    headers_out = request.state.draftgate_headers
    if body.stream:
        chunks, headers = await services.pipeline.stream(body, principal, request.state.request_id, headers_out)
        return StreamingResponse(chunks, media_type="text/event-stream",
                                 headers={**headers, "cache-control": "no-cache"})
    result, headers = await services.pipeline.complete(body, principal, request.state.request_id, headers_out)
    return Response(orjson.dumps(result), media_type="application/json", headers=headers)


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
