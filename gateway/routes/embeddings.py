"""OpenAI-compatible embeddings, served by the hosted alias the request names."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.deps import PrincipalDep
from gateway.routes.chat import unless_disconnected
from gateway.schemas import EmbeddingRequest
from gateway.services import Services

router = APIRouter()


@router.post("/v1/embeddings")
@router.post("/embeddings", include_in_schema=False)
async def embeddings(body: EmbeddingRequest, request: Request, principal: PrincipalDep) -> Response:
    """The upstream's embeddings list, relayed as it sent it (base64 vectors stay base64)."""
    services: Services = request.app.state.services  # as chat: no thread hop for a sync dependency
    assert services.pipeline is not None
    result = await unless_disconnected(request, services.pipeline.embed(
        body, principal, request.state.request_id, request.state.draftgate_headers))
    if result is None:
        return Response(status_code=499)  # the client left: its row says cancelled
    answer, headers = result
    return Response(orjson.dumps(answer), media_type="application/json", headers=headers)
